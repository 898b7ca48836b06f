-- What PostgreSQL alone needs to store a first sync's rows, for comparison with
-- `ccsync bench pull`'s apply stage (docs/performance.md, "The PostgreSQL floor").
--
-- Run after `ccsync bench pull --contacts 200000` (which leaves its store in ccsync_bench):
--
--     psql -h 127.0.0.1 -U postgres -d ccsync_bench -f tools/pg-floor.sql
--
-- It exports the bench account's contacts, memberships and changes rows in binary, then
-- loads each into an empty copy of its table (same columns, same indexes, logged like the
-- real one, synchronous_commit off like a page's transaction) with one binary COPY on one
-- connection, and prints the time of each. Divide by the contact count for µs a contact.
-- It leaves nothing behind but the three files in /tmp.

\set ON_ERROR_STOP on
SET synchronous_commit = off;

\copy (SELECT * FROM ccsync.contacts WHERE account_id = 'bench') TO '/tmp/ccsync-floor-contacts.bin' WITH (FORMAT binary)
\copy (SELECT * FROM ccsync.list_memberships WHERE account_id = 'bench') TO '/tmp/ccsync-floor-memberships.bin' WITH (FORMAT binary)
\copy (SELECT * FROM ccsync.changes WHERE account_id = 'bench') TO '/tmp/ccsync-floor-changes.bin' WITH (FORMAT binary)

SELECT (SELECT count(*) FROM ccsync.contacts WHERE account_id = 'bench') AS contacts,
       (SELECT count(*) FROM ccsync.list_memberships WHERE account_id = 'bench') AS memberships,
       (SELECT count(*) FROM ccsync.changes WHERE account_id = 'bench') AS changes;

DROP SCHEMA IF EXISTS ccsync_floor CASCADE;
CREATE SCHEMA ccsync_floor;
CREATE TABLE ccsync_floor.contacts (LIKE ccsync.contacts INCLUDING ALL);
CREATE TABLE ccsync_floor.list_memberships (LIKE ccsync.list_memberships INCLUDING ALL);
CREATE TABLE ccsync_floor.changes (LIKE ccsync.changes INCLUDING ALL);
CHECKPOINT;

\timing on
\echo contacts (binary COPY, with the three indexes):
\copy ccsync_floor.contacts FROM '/tmp/ccsync-floor-contacts.bin' WITH (FORMAT binary)
\echo list_memberships:
\copy ccsync_floor.list_memberships FROM '/tmp/ccsync-floor-memberships.bin' WITH (FORMAT binary)
\echo changes:
\copy ccsync_floor.changes FROM '/tmp/ccsync-floor-changes.bin' WITH (FORMAT binary)
\echo contacts again, without indexes (what the indexes cost):
TRUNCATE ccsync_floor.contacts;
CREATE TABLE ccsync_floor.contacts_bare (LIKE ccsync.contacts);
\copy ccsync_floor.contacts_bare FROM '/tmp/ccsync-floor-contacts.bin' WITH (FORMAT binary)
\timing off

DROP SCHEMA ccsync_floor CASCADE;
