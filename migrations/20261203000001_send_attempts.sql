-- A bulk request (import, list removal, delete) is recorded here, and its rows marked, in a
-- transaction committed BEFORE the request is sent. The answer's transaction deletes the
-- record and marks the rows `submitted`. A record that outlives its run means the answer
-- was never recorded (ccsync stopped between the request and its commit, or the answer was
-- lost): the next push looks for the activity in `GET /activities` before anything is sent
-- again, and follows it if found — re-sending could undo what a subscriber did in between
-- (a list left after the first import would be joined again).
CREATE TABLE ccsync.send_attempts (
    id          uuid        PRIMARY KEY,
    account_id  text        NOT NULL,
    kind        text        NOT NULL,
    list_ids    uuid[]      NOT NULL DEFAULT '{}',
    row_count   integer     NOT NULL,
    -- The rows and the reasons `submitted` records with them (notes of resolved conflicts).
    row_ids     bigint[]    NOT NULL,
    reasons     text[]      NOT NULL,
    -- The rows' reasons before the attempt, put back when the request is known not sent.
    previous_reasons text[] NOT NULL DEFAULT '{}',
    body_bytes  integer     NOT NULL DEFAULT 0,
    run_id      uuid,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- Why the answer is unknown when the client gave up on it (a timeout, a reset, a 5xx,
    -- a body that did not decode); NULL when ccsync stopped before it could say.
    lost_answer text
);
CREATE INDEX send_attempts_account_idx ON ccsync.send_attempts (account_id, started_at);

-- The send attempt a row is part of while its answer is unknown. Such a row is never planned
-- again until the attempt is resolved (its activity found and followed, or known not to exist).
ALTER TABLE ccsync.outbound ADD COLUMN send_attempt uuid;
CREATE INDEX outbound_send_attempt_idx ON ccsync.outbound (send_attempt)
    WHERE send_attempt IS NOT NULL;
