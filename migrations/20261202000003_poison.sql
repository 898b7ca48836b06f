-- Bad input from Constant Contact that a pull did not store as it came: a page element that
-- is not a storable contact (kind `poison`: skipped, the rest of its page applied), and a
-- value that held NUL characters PostgreSQL refuses (kind `nul_removed`: stored without
-- them). Written in the page's transaction; kept for an operator to look at.
CREATE TABLE ccsync.poison_records (
    id         bigserial   PRIMARY KEY,
    account_id text        NOT NULL,
    run_id     uuid,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text        NOT NULL CHECK (kind IN ('poison', 'nul_removed')),
    contact_id uuid,                       -- when known
    field      text,                       -- the column that lost a NUL (`nul_removed`)
    reason     text        NOT NULL,
    record     jsonb                       -- the element as it came, NULs removed (`poison`)
);
CREATE INDEX poison_records_account_idx ON ccsync.poison_records (account_id, at);
