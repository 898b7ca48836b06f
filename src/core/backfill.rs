//! How a first sync reads an account (`sync.backfill`): page through `GET /contacts` (one
//! request per 500 contacts), or export it (`POST /activities/contact_exports` and the CSV:
//! a handful of requests per export, one export for the contacts and one per list for the
//! memberships). `auto` decides per run from the account's size and the budget left today.

use serde::Deserialize;

/// `sync.backfill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Always page (every column; the default until the export's columns are confirmed
    /// against a live account).
    Paged,
    /// Export whenever the export can be used (its CSV has a `contact_id` column).
    Export,
    /// Export when it is much cheaper in requests or the paged pull would take a large
    /// share of what is left of today's budget ([`choose`]).
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Paged => "paged",
            Mode::Export => "export",
            Mode::Auto => "auto",
        }
    }
}

/// Which path a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Paged,
    Export,
}

/// Polls expected per export before it completes (an estimate: each poll is one request).
pub const POLLS_PER_EXPORT: u64 = 4;

/// Requests of a paged first sync of `contacts` contacts.
pub fn paged_cost(contacts: u64, page_size: u64) -> u64 {
    contacts.div_ceil(page_size.max(1)).max(1)
}

/// Requests of an export backfill with `lists` lists: the two catalogues, one export for the
/// contacts and one per list (each a POST, its polls and the CSV), and at least one page of
/// the deleted contacts (an export does not mark them).
pub fn export_cost(lists: u64) -> u64 {
    2 + (1 + lists) * (2 + POLLS_PER_EXPORT) + 1
}

/// `auto`'s rule: export when it costs at most half the requests of paging, or when it is
/// cheaper at all and paging would take more than a tenth of the requests left today
/// (`budget_left`, shared by every account on the key).
pub fn choose(mode: Mode, contacts: u64, page_size: u64, lists: u64, budget_left: u64) -> Choice {
    match mode {
        Mode::Paged => Choice::Paged,
        Mode::Export => Choice::Export,
        Mode::Auto => {
            let paged = paged_cost(contacts, page_size);
            let export = export_cost(lists);
            if export.saturating_mul(2) <= paged || (export < paged && paged > budget_left / 10) {
                Choice::Export
            } else {
                Choice::Paged
            }
        }
    }
}

/// What the export path did (`sync_runs.stats.export`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportStats {
    pub mode: &'static str,
    /// The export was applied (false: the run paged, see `paged_because`).
    pub used: bool,
    pub paged_because: Option<String>,
    pub exports: u64,
    pub polls: u64,
    pub csv_bytes: u64,
    pub rows: u64,
    /// Rows of the contacts export left out because the contact is deleted.
    pub deleted_rows_skipped: u64,
    pub memberships_added: u64,
    pub deleted_pages: u64,
    /// Requests of the export path (catalogues, exports, polls, files, deleted pages).
    pub api_requests: u64,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_modes_ignore_the_numbers() {
        assert_eq!(choose(Mode::Paged, 10_000_000, 500, 0, 0), Choice::Paged);
        assert_eq!(choose(Mode::Export, 1, 500, 40, 10_000), Choice::Export);
    }

    #[test]
    fn auto_pages_small_accounts_and_exports_large_ones() {
        // 3 lists: an export costs 2 + 4·6 + 1 = 27 requests.
        assert_eq!(export_cost(3), 27);
        // 5,000 contacts = 10 pages: paging is cheaper.
        assert_eq!(choose(Mode::Auto, 5_000, 500, 3, 10_000), Choice::Paged);
        // 1,000,000 contacts = 2,000 pages: export.
        assert_eq!(
            choose(Mode::Auto, 1_000_000, 500, 3, 10_000),
            Choice::Export
        );
        // 30 pages against 27: only just cheaper, and a small share of a full budget: page.
        assert_eq!(choose(Mode::Auto, 15_000, 500, 3, 10_000), Choice::Paged);
        // The same account late in a day with 200 requests left: 30 > 20, export.
        assert_eq!(choose(Mode::Auto, 15_000, 500, 3, 200), Choice::Export);
        // Many lists make the export dear: 200 lists = 1,209 requests vs 1,000 pages.
        assert_eq!(choose(Mode::Auto, 500_000, 500, 200, 10_000), Choice::Paged);
    }

    #[test]
    fn auto_never_exports_when_paging_is_cheaper() {
        for contacts in [0u64, 1, 499, 500, 5_000, 13_000] {
            for budget in [0u64, 10, 10_000] {
                let c = choose(Mode::Auto, contacts, 500, 3, budget);
                if paged_cost(contacts, 500) <= export_cost(3) {
                    assert_eq!(c, Choice::Paged, "{contacts} contacts, {budget} left");
                }
            }
        }
    }
}
