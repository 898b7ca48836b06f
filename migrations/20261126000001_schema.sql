-- The whole public contract of DESIGN.md §3, schema `ccsync`.
-- The application reads these tables and writes only `outbound`.
CREATE SCHEMA IF NOT EXISTS ccsync;

-- Contacts as Constant Contact last told us (primary wins).
CREATE TABLE ccsync.contacts (
    account_id         text        NOT NULL,
    contact_id         uuid        NOT NULL,
    email              text,                       -- lower-case
    first_name         text,
    last_name          text,
    job_title          text,
    company_name       text,
    birthday_month     smallint,
    birthday_day       smallint,
    anniversary        text,
    permission_to_send text,                       -- as the API spells it
    opt_in_source      text,
    opt_in_date        timestamptz,
    opt_out_source     text,
    opt_out_date       timestamptz,
    opt_out_reason     text,
    confirm_status     text,
    email_updated_at   timestamptz,
    custom_fields      jsonb       NOT NULL DEFAULT '[]',
    phone_numbers      jsonb       NOT NULL DEFAULT '[]',
    street_addresses   jsonb       NOT NULL DEFAULT '[]',
    taggings           jsonb       NOT NULL DEFAULT '[]',
    create_source      text,
    update_source      text,
    created_at         timestamptz,
    updated_at         timestamptz NOT NULL,       -- Constant Contact's clock, never ours
    deleted_at         date,                       -- the API gives a date for contacts
    synced_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, contact_id)
);
CREATE INDEX contacts_email_idx ON ccsync.contacts (account_id, email);
CREATE INDEX contacts_unsubscribed_idx ON ccsync.contacts (account_id)
    WHERE permission_to_send = 'unsubscribed';

CREATE TABLE ccsync.contact_lists (
    account_id       text        NOT NULL,
    list_id          uuid        NOT NULL,
    name             text        NOT NULL,
    description      text,
    favorite         boolean     NOT NULL DEFAULT false,
    membership_count integer,
    created_at       timestamptz,
    updated_at       timestamptz,
    deleted_at       timestamptz,
    synced_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list_id)
);

CREATE TABLE ccsync.list_memberships (
    account_id text        NOT NULL,
    contact_id uuid        NOT NULL,
    list_id    uuid        NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, contact_id, list_id)
);
CREATE INDEX list_memberships_list_idx ON ccsync.list_memberships (account_id, list_id);

-- The application's queue of local changes. Inserting a row is the whole API.
CREATE TABLE ccsync.outbound (
    id              bigserial   PRIMARY KEY,
    account_id      text        NOT NULL DEFAULT 'default',
    email           text        NOT NULL,
    fields          jsonb       NOT NULL DEFAULT '{}',
    list_ids        uuid[]      NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    state           text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'submitted', 'completed', 'skipped', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    reason          text,
    activity_id     text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz
);
CREATE INDEX outbound_pending_idx ON ccsync.outbound (account_id, id) WHERE state = 'pending';
CREATE INDEX outbound_email_idx ON ccsync.outbound (account_id, lower(email));
CREATE INDEX outbound_state_idx ON ccsync.outbound (account_id, state);

-- Append-only log of every change applied or refused.
CREATE TABLE ccsync.changes (
    id         bigserial   PRIMARY KEY,
    account_id text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    run_id     uuid,
    contact_id uuid,
    email      text,
    origin     text        NOT NULL CHECK (origin IN ('constant_contact', 'local')),
    kind       text        NOT NULL CHECK (kind IN ('created', 'updated', 'unsubscribed',
                    'resubscribed', 'deleted', 'restored', 'list_added', 'list_removed',
                    'conflict', 'skipped')),
    field      text,
    old_value  jsonb,
    new_value  jsonb
);
CREATE INDEX changes_contact_idx ON ccsync.changes (account_id, contact_id, at);

CREATE TABLE ccsync.sync_state (
    account_id      text        NOT NULL,
    job             text        NOT NULL,
    watermark       timestamptz,
    last_success_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, job)
);

CREATE TABLE ccsync.sync_runs (
    id          uuid        PRIMARY KEY,
    account_id  text        NOT NULL,
    job         text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text        CHECK (outcome IN ('running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    stats       jsonb       NOT NULL DEFAULT '{}',
    error       text
);
CREATE INDEX sync_runs_recent_idx ON ccsync.sync_runs (account_id, job, started_at DESC);

CREATE TABLE ccsync.import_activities (
    activity_id     text        PRIMARY KEY,
    account_id      text        NOT NULL,
    state           text        NOT NULL,
    list_ids        uuid[]      NOT NULL DEFAULT '{}',
    row_count       integer     NOT NULL DEFAULT 0,
    body_bytes      integer,
    run_id          uuid,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    last_polled_at  timestamptz,
    percent_done    integer,
    status          jsonb       NOT NULL DEFAULT '{}',
    activity_errors jsonb       NOT NULL DEFAULT '[]',
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX import_activities_open_idx ON ccsync.import_activities (account_id)
    WHERE finished_at IS NULL;

CREATE TABLE ccsync.oauth_tokens (
    account_id        text        PRIMARY KEY,
    access_token      text,
    access_expires_at timestamptz,
    refresh_token     text,
    refresh_kind      text,       -- 'rotating' | 'long_lived' | NULL (unknown yet)
    encrypted         boolean     NOT NULL DEFAULT false,
    needs_reauth      boolean     NOT NULL DEFAULT false,
    reauth_reason     text,
    last_refresh_at   timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Requests per UTC day. The limits belong to the API key, so every account and replica
-- counts in the same rows.
CREATE TABLE ccsync.api_usage (
    day        date        NOT NULL,
    account_id text        NOT NULL,
    requests   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, account_id)
);

-- A day on which Constant Contact answered `quota_exceeded`: every replica pauses until
-- the quota resets at 00:00 UTC instead of burning requests on refusals.
CREATE TABLE ccsync.api_quota (
    day          date        PRIMARY KEY,
    exhausted_at timestamptz NOT NULL DEFAULT now()
);
