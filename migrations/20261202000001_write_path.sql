-- The whole write path: what an outbound row asks for, and which bulk activity carries it.
--
-- `op` is text without a CHECK constraint on purpose: an unknown value is not refused by the
-- database (the application's insert would fail and the change be lost), it ends `failed`
-- with a reason naming it.
ALTER TABLE ccsync.outbound ADD COLUMN op text NOT NULL DEFAULT 'upsert';

-- Every bulk activity the push follows: contacts_json_import, remove_list_memberships,
-- contact_delete. Polled and confirmed alike; `kind` says how its rows are confirmed.
ALTER TABLE ccsync.import_activities
    ADD COLUMN kind text NOT NULL DEFAULT 'contacts_json_import';
