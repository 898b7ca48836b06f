-- Constant Contact's custom field catalogue: contacts carry custom fields by
-- `custom_field_id`, imports name them `cf:<name>`. Replaced whole by the lists job each
-- cycle (definitions gone from Constant Contact are deleted here).
CREATE TABLE ccsync.custom_fields (
    account_id      text        NOT NULL,
    custom_field_id uuid        NOT NULL,
    name            text        NOT NULL,      -- what an import's `cf:<name>` names
    label           text,
    type            text,
    updated_at      timestamptz,               -- Constant Contact's clock
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, custom_field_id),
    -- Deferred: a catalogue where two fields swapped names is replaced in one transaction.
    CONSTRAINT custom_fields_name_key UNIQUE (account_id, name) DEFERRABLE INITIALLY DEFERRED
);

-- Each live contact's custom field values by name: `contacts.custom_fields` (a jsonb array
-- of {custom_field_id, value}) joined to the catalogue. A value of a field the catalogue
-- does not know (yet) is not shown.
CREATE VIEW ccsync.contacts_custom_fields AS
SELECT c.account_id, c.contact_id, f.custom_field_id, f.name, f.label, v.item ->> 'value' AS value
FROM ccsync.contacts c
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(c.custom_fields) = 'array' THEN c.custom_fields ELSE '[]'::jsonb END
) AS v(item)
JOIN ccsync.custom_fields f
  ON f.account_id = c.account_id
 AND f.custom_field_id::text = lower(v.item ->> 'custom_field_id')
WHERE c.deleted_at IS NULL;
