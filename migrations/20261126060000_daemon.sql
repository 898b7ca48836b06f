-- `ccsync run`: request pacing shared by every replica, one claim per (account, tick) so
-- that a scheduled cycle runs once however many replicas fire it, and the tick of each run.

-- One row per API key: the next free request slot. Every replica claims slots here, so
-- requests-per-second holds across processes (the daily budget is `api_usage`).
CREATE TABLE ccsync.api_pacer (
    api_key      text        PRIMARY KEY,
    next_slot_at timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A scheduled cycle of one account at one tick, claimed by the first replica to fire it.
-- `jobs` is what the cycle must run, `done` what it finished. A claim left unfinished
-- (its replica was killed or stopped mid-cycle) is taken over by the next cycle of that
-- account, which runs the jobs not done and marks it `recovered`.
CREATE TABLE ccsync.schedule_claims (
    account_id   text        NOT NULL,
    tick         timestamptz NOT NULL,
    jobs         text[]      NOT NULL,
    done         text[]      NOT NULL DEFAULT '{}',
    replica      text        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('completed', 'failed', 'skipped', 'recovered')),
    recovered_by timestamptz,
    PRIMARY KEY (account_id, tick)
);
CREATE INDEX schedule_claims_open_idx ON ccsync.schedule_claims (account_id, tick)
    WHERE finished_at IS NULL;

-- The scheduled tick a run belongs to (NULL for `ccsync sync` and skipped firings).
ALTER TABLE ccsync.sync_runs ADD COLUMN scheduled_for timestamptz;
