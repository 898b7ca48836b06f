//! Rows in PostgreSQL's binary `COPY` format, and `COPY … FROM STDIN` of them.
//!
//! Why hand-written: sqlx 0.8 streams `COPY` data but has no row encoder, and the crates
//! that have one serve the `postgres` driver (`postgres-binary-copy`) or are unmaintained
//! drafts (`pgcopy` 0.0.2). The format is small and fixed
//! (<https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>): a header, per
//! row a field count and per field a length and the type's binary (send/recv) form. The
//! encodings below are the ones sqlx itself uses for binds, so a value stored by `COPY`
//! is byte for byte the value a bound parameter stored; `tests` read every type back.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The signature, flags and header-extension length that open every binary `COPY`.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// Days from 0001-01-01 (CE day 1) to 2000-01-01.
const PG_EPOCH_CE_DAYS: i32 = 730_120;

/// A buffer of rows in binary `COPY` format. Each row is [`row`](Self::row) with its field
/// count, then exactly that many fields.
pub struct CopyRows {
    buf: Vec<u8>,
    rows: u64,
}

impl Default for CopyRows {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl CopyRows {
    /// An empty buffer with room for about `bytes`.
    pub fn with_capacity(bytes: usize) -> CopyRows {
        let mut buf = Vec::with_capacity(bytes.max(HEADER.len() + 2));
        buf.extend_from_slice(HEADER);
        CopyRows { buf, rows: 0 }
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        // Every field here is far below 2 GiB (a page's values); the cast cannot wrap.
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn uuid(&mut self, v: Uuid) -> &mut Self {
        self.field(v.as_bytes())
    }

    pub fn opt_uuid(&mut self, v: Option<Uuid>) -> &mut Self {
        match v {
            Some(u) => self.uuid(u),
            None => self.null(),
        }
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.field(&v.to_be_bytes())
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        self.field(v.as_bytes())
    }

    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn opt_i16(&mut self, v: Option<i16>) -> &mut Self {
        match v {
            Some(n) => self.field(&n.to_be_bytes()),
            None => self.null(),
        }
    }

    /// `timestamptz`: microseconds since 2000-01-01 UTC (sub-microseconds truncated, as
    /// sqlx's bind does).
    pub fn timestamptz(&mut self, v: DateTime<Utc>) -> &mut Self {
        let unix = v.timestamp_micros();
        self.field(&(unix - PG_EPOCH_UNIX_MICROS).to_be_bytes())
    }

    pub fn opt_timestamptz(&mut self, v: Option<DateTime<Utc>>) -> &mut Self {
        match v {
            Some(t) => self.timestamptz(t),
            None => self.null(),
        }
    }

    /// `date`: days since 2000-01-01.
    pub fn opt_date(&mut self, v: Option<NaiveDate>) -> &mut Self {
        use chrono::Datelike;
        match v {
            Some(d) => self.field(&(d.num_days_from_ce() - PG_EPOCH_CE_DAYS).to_be_bytes()),
            None => self.null(),
        }
    }

    /// `jsonb`: the format version (1) and the value's JSON text, written in place.
    pub fn jsonb<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<&mut Self, serde_json::Error> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0, 1]);
        serde_json::to_writer(&mut self.buf, v)?;
        let len = (self.buf.len() - at - 4) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(self)
    }

    /// `jsonb` from JSON text already in hand (not checked here: PostgreSQL parses it).
    pub fn jsonb_text(&mut self, text: &str) -> &mut Self {
        self.buf
            .extend_from_slice(&((text.len() + 1) as i32).to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(text.as_bytes());
        self
    }

    pub fn opt_jsonb<T: Serialize>(
        &mut self,
        v: Option<&T>,
    ) -> Result<&mut Self, serde_json::Error> {
        match v {
            Some(v) => self.jsonb(v),
            None => Ok(self.null()),
        }
    }

    /// The finished `COPY` data (the trailer appended).
    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Runs `statement` (a `COPY … FROM STDIN (FORMAT binary)`) with `rows` as its data;
/// the number of rows copied. A failure mid-stream aborts the `COPY`, so the connection
/// is left usable (inside the caller's transaction, which the error then rolls back).
pub fn copy_in<'a>(
    conn: &'a mut PgConnection,
    statement: &'a str,
    rows: CopyRows,
) -> futures_util::future::BoxFuture<'a, Result<u64, sqlx::Error>> {
    // Boxed as `Send` here: the compiler cannot prove sqlx's `COPY` future `Send` for
    // every lifetime once it is nested in the jobs' futures.
    Box::pin(async move {
        if rows.rows() == 0 {
            return Ok(0);
        }
        let data = rows.finish();
        let mut copy = conn.copy_in_raw(statement).await?;
        let sent = copy.send(data).await.map(|_| ());
        match sent {
            Ok(()) => copy.finish().await,
            Err(e) => {
                // The server answers an abort with an error of its own; ours is the one
                // to keep.
                let _ = copy.abort("ccsync: sending COPY data failed").await;
                Err(e)
            }
        }
    })
}

/// Runs `sql`, several statements in one round trip (the simple query protocol; nothing
/// bound). Boxed as `Send` for the reason [`copy_in`] is.
pub fn script<'a>(
    conn: &'a mut PgConnection,
    sql: &'static str,
) -> futures_util::future::BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        // A `&str` runs unprepared (the simple query protocol): several statements.
        sqlx::Executor::execute(&mut *conn, sql).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_are_postgres_epoch() {
        let pg = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        use chrono::Datelike;
        assert_eq!(pg.num_days_from_ce(), PG_EPOCH_CE_DAYS);
        assert_eq!(
            pg.and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros(),
            PG_EPOCH_UNIX_MICROS
        );
    }

    #[test]
    fn a_row_is_its_field_count_then_length_prefixed_fields() {
        let mut r = CopyRows::default();
        r.row(3).opt_i16(Some(-2)).null().text("é");
        assert_eq!(r.rows(), 1);
        let data = r.finish();
        assert_eq!(&data[..HEADER.len()], HEADER);
        assert_eq!(
            &data[HEADER.len()..],
            &[
                0, 3, 0, 0, 0, 2, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 0xc3, 0xa9, 0xff,
                0xff
            ]
        );
    }

    #[test]
    fn jsonb_is_version_one_and_the_text_with_its_length() {
        let mut r = CopyRows::default();
        r.jsonb(&serde_json::json!([1])).unwrap();
        let data = r.finish();
        assert_eq!(
            &data[HEADER.len()..HEADER.len() + 8],
            &[0, 0, 0, 4, 1, b'[', b'1', b']']
        );
        let mut t = CopyRows::default();
        t.jsonb_text("[1]");
        assert_eq!(t.finish(), data, "text in hand encodes as the value does");
    }
}
