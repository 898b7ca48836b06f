#!/usr/bin/env python3
"""Derive tests/fixtures/ctct_schemas.json from the Constant Contact V3 Swagger 2.0 spec.

One-off generator: its output is committed, nothing at build/test/run time runs it.

    python3 tools/derive_schemas.py /path/to/openapi.yaml [out.json]

The output is a single JSON Schema (draft 2020-12) document whose `$defs` hold the
contact, list, bulk-activity and error definitions a sync daemon touches, plus all
definitions they reference.  Only machine-checkable facts are kept (property names,
types, enums, required, formats, length/item/number bounds, defaults); prose
(description, example, title), `readOnly` and `x-*` extensions are dropped.

Every definition X also gets a strict twin `X.strict`: the same schema with
`additionalProperties: false` on every object and `$ref`s pointing at strict twins.
The lax form matches the real API (which adds fields over time); the strict form
catches field-name typos in a fake server or in request bodies.

Known spec bugs are handled explicitly (see API-NOTES.md section 13 and the PATCHES
below); every curated patch asserts the spec still looks the way it did when the patch
was written, so a spec change makes this script fail instead of silently drifting.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

ROOTS = [
    "Contacts",
    "ContactResource",
    "EmailAddress",
    "PagingLinks",
    "Link",
    "ContactListArray",
    "ContactList",
    "CustomFields",
    "ActivityImport",
    "Activity",
    "Activities",
    "ActivityStatus",
    "ActivityListsMembership",
    "ActivityDeleteStatus",
    "ActivityErrors",
    "ContactsJsonImport",
    "JsonImportContact",
    "ListActivityAddContacts",
    "ListActivityRemoveContacts",
    "ContactPutRequest",
    "ContactDelete",
    "CustomFields",
    "APIErrorSchema",
    "AuthorizationErrorSchema",
]

# Swagger keywords carried over unchanged (all mean the same in JSON Schema 2020-12).
KEEP = {
    "type",
    "format",
    "enum",
    "required",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "pattern",
    "default",
}
# Prose / annotations for code generators: dropped.
DROP = {"description", "example", "title", "readOnly"}

# Closed value sets that the spec states only in prose.  Key: (definition, JSON path of
# the property inside the definition).  Each value must literally appear in the
# property's description, which is checked below.
CONTACT_OR_ACCOUNT = ["Contact", "Account"]
ACTIVITY_STATES = ["initialized", "processing", "completed", "cancelled", "failed", "timed_out"]
ENUMS: dict[tuple[str, str], list[str]] = {
    ("EmailAddress", "permission_to_send"): [
        "explicit",
        "implicit",
        "not_set",
        "pending_confirmation",
        "temp_hold",
        "unsubscribed",
    ],
    ("EmailAddress", "opt_in_source"): CONTACT_OR_ACCOUNT,
    ("EmailAddress", "opt_out_source"): CONTACT_OR_ACCOUNT,
    ("EmailAddress", "confirm_status"): ["pending", "confirmed", "off"],
    ("ContactResource", "update_source"): CONTACT_OR_ACCOUNT,
    ("ContactResource", "create_source"): CONTACT_OR_ACCOUNT,
    ("ContactPutRequest", "update_source"): CONTACT_OR_ACCOUNT,
    ("ContactResource", "sms_channel/update_source"): CONTACT_OR_ACCOUNT,
    ("ContactResource", "sms_channel/create_source"): CONTACT_OR_ACCOUNT,
    ("PhoneNumber", "kind"): ["home", "work", "mobile", "other"],
    ("PhoneNumber", "update_source"): CONTACT_OR_ACCOUNT,
    ("PhoneNumber", "create_source"): CONTACT_OR_ACCOUNT,
    ("StreetAddress", "kind"): ["home", "work", "other"],
    ("ContactsJsonImport", "sms_permission_to_send"): ["explicit", "not_set"],
    ("Activity", "state"): ACTIVITY_STATES,
    ("Activities", "activities/[]/state"): ACTIVITY_STATES,
    ("ActivityImport", "state"): ACTIVITY_STATES,
    ("ActivityListsMembership", "state"): ACTIVITY_STATES,
    ("ActivityDeleteStatus", "state"): ACTIVITY_STATES,
}

# Numeric bounds the spec states only in prose: (definition, path) -> (min, max, proof).
# `proof` must appear in the description.  ContactResource.birthday_day says "1 through
# 12" (API-NOTES 13.5, a typo); the import schema's "1 through 31" is used for both.
RANGES: dict[tuple[str, str], tuple[int, int, str]] = {
    ("ContactResource", "birthday_month"): (1, 12, "1 through 12"),
    ("ContactResource", "birthday_day"): (1, 31, "1 through 12"),
    ("JsonImportContact", "birthday_month"): (1, 12, "1 through 12"),
    ("JsonImportContact", "birthday_day"): (1, 31, "1 through 31"),
}
PERCENT_DEFS = ["Activity", "ActivityImport", "ActivityListsMembership", "ActivityDeleteStatus"]


def fail(msg: str) -> None:
    sys.exit(f"derive_schemas: {msg}")


def lookup(schema: dict, path: str) -> dict:
    """Follow a `a/b/[]/c` path through properties / items of a raw or converted schema."""
    node = schema
    for part in path.split("/"):
        if part == "[]":
            node = node.get("items")
        else:
            node = (node.get("properties") or {}).get(part)
        if not isinstance(node, dict):
            fail(f"path {path!r} not found")
    return node


def refs_of(node, acc: set[str]) -> None:
    if isinstance(node, dict):
        for key, val in node.items():
            if key == "$ref":
                if not val.startswith("#/definitions/"):
                    fail(f"unsupported $ref {val!r}")
                acc.add(val[len("#/definitions/") :])
            elif key not in ("example", "x-example"):
                refs_of(val, acc)
    elif isinstance(node, list):
        for item in node:
            refs_of(item, acc)


def closure(defs: dict, roots: list[str]) -> list[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in defs:
            fail(f"definition {name!r} not in spec")
        seen.add(name)
        found: set[str] = set()
        refs_of(defs[name], found)
        todo.extend(sorted(found - seen))
    return sorted(seen)


BENDS: list[str] = []


def convert(node: dict, where: str) -> dict:
    """Swagger 2.0 schema object -> JSON Schema 2020-12 (lax form)."""
    out: dict = {}
    for key, val in node.items():
        if key in DROP or key.startswith("x-"):
            continue
        if key == "$ref":
            out["$ref"] = "#/$defs/" + val[len("#/definitions/") :]
        elif key == "properties":
            out["properties"] = {p: convert(s, f"{where}/{p}") for p, s in val.items()}
        elif key == "items":
            out["items"] = convert(val, f"{where}/[]")
        elif key == "additionalProperties":
            out[key] = val if isinstance(val, bool) else convert(val, f"{where}/{{}}")
        elif key == "maxItems" and val == 0:
            # Spec bug (API-NOTES 13.1): maxItems 0 on arrays that accept 50/500 items.
            # Use the "up to N" the description states; otherwise leave unbounded.
            m = re.search(r"up to (\d+)", node.get("description", ""))
            if m:
                out["maxItems"] = int(m.group(1))
                BENDS.append(f"{where}: maxItems 0 -> {m.group(1)} (from description)")
            else:
                BENDS.append(f"{where}: maxItems 0 dropped (no limit stated)")
        elif key in KEEP:
            out[key] = copy.deepcopy(val)
        else:
            fail(f"{where}: unhandled keyword {key!r}; extend KEEP/DROP deliberately")
    return out


def patch(raw_defs: dict, out: dict) -> None:
    for (name, path), values in ENUMS.items():
        desc = " ".join(lookup(raw_defs[name], path).get("description", "").split())
        for v in values:
            if not re.search(rf"(?<![\w]){re.escape(v)}(?![\w])", desc):
                fail(f"{name}/{path}: enum value {v!r} no longer in description: {desc!r}")
        target = lookup(out[name], path)
        if target.get("type") != "string" or "enum" in target:
            fail(f"{name}/{path}: expected a plain string")
        target["enum"] = list(values)

    for (name, path), (lo, hi, proof) in RANGES.items():
        if proof not in lookup(raw_defs[name], path).get("description", ""):
            fail(f"{name}/{path}: description no longer says {proof!r}")
        target = lookup(out[name], path)
        if target.get("type") != "integer":
            fail(f"{name}/{path}: expected integer")
        target["minimum"], target["maximum"] = lo, hi
    BENDS.append("ContactResource/birthday_day: spec text says 1-12 (typo); used 1-31")

    for name in PERCENT_DEFS:
        target = lookup(out[name], "percent_done")
        if target.get("type") != "integer":
            fail(f"{name}/percent_done: expected integer")
        target["minimum"], target["maximum"] = 0, 100

    # activity_errors: spec says array of strings, an ActivityErrors{message} object
    # also exists and the real format is unconfirmed (API-NOTES 13.10): accept both.
    def fix_activity_errors(node) -> None:
        if isinstance(node, dict):
            props = node.get("properties") or {}
            if "activity_errors" in props:
                arr = props["activity_errors"]
                if arr.get("type") != "array" or arr.get("items", {}).get("type") != "string":
                    fail(f"activity_errors changed shape: {arr!r}")
                arr["items"] = {
                    "anyOf": [{"type": "string"}, {"$ref": "#/$defs/ActivityErrors"}]
                }
            for val in node.values():
                fix_activity_errors(val)

    for name, schema in out.items():
        fix_activity_errors(schema)
    if "ActivityErrors" not in out:
        fail("ActivityErrors missing")
    BENDS.append("activity_errors items: string or ActivityErrors {message}")

    # JsonImportContact quirks (API-NOTES section 6, 13.4).
    jic = out["JsonImportContact"]
    props = jic["properties"]
    cf = props.pop("cf:custom_field_name", None)
    if cf is None:
        fail("JsonImportContact: 'cf:custom_field_name' placeholder gone")
    jic["patternProperties"] = {"^cf:.+$": cf}
    BENDS.append("JsonImportContact: 'cf:custom_field_name' placeholder -> patternProperties ^cf:")
    if "home country" not in props or "home_country" in props:
        fail("JsonImportContact: 'home country' quirk changed")
    props["home_country"] = copy.deepcopy(props["home country"])
    BENDS.append("JsonImportContact: kept 'home country' (spec) and added 'home_country'")
    for key in ("email", "sms_number"):
        if "Required if" not in raw_defs["JsonImportContact"]["properties"][key]["description"]:
            fail(f"JsonImportContact.{key}: 'Required if' note gone")
    jic["anyOf"] = [{"required": ["email"]}, {"required": ["sms_number"]}]
    jic["dependentRequired"] = {
        "birthday_month": ["birthday_day"],
        "birthday_day": ["birthday_month"],
    }


def strict(node):
    """Strict twin: additionalProperties false on every object, refs to strict twins."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, val in node.items():
        if key == "$ref":
            out[key] = val + ".strict"
        elif key in ("properties", "patternProperties", "$defs", "dependentRequired"):
            out[key] = {k: strict(v) if key != "dependentRequired" else v for k, v in val.items()}
        elif key in ("enum", "required", "default"):
            out[key] = copy.deepcopy(val)
        else:
            out[key] = strict(val)
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def main() -> None:
    if len(sys.argv) not in (2, 3):
        fail("usage: derive_schemas.py SPEC.yaml [OUT.json]")
    spec_path = Path(sys.argv[1])
    out_path = Path(sys.argv[2]) if len(sys.argv) == 3 else (
        Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ctct_schemas.json"
    )
    raw = spec_path.read_bytes()
    spec = yaml.safe_load(raw)
    if spec.get("swagger") != "2.0":
        fail("expected a Swagger 2.0 document")
    build = spec["info"]["version"]
    raw_defs = spec["definitions"]

    names = closure(raw_defs, ROOTS)
    lax = {n: convert(raw_defs[n], n) for n in names}
    patch(raw_defs, lax)

    defs: dict = {}
    for n in names:
        defs[n] = lax[n]
        defs[f"{n}.strict"] = strict(lax[n])

    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"Derived from the Constant Contact V3 Swagger 2.0 spec, build {build} "
            f"(sha256 {hashlib.sha256(raw).hexdigest()}), by tools/derive_schemas.py. "
            "Do not edit by hand; regenerate. Each X has a strict twin X.strict "
            "(additionalProperties false everywhere)."
        ),
        "$defs": defs,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out_path}: {len(names)} definitions (+ strict twins) from build {build}")
    for b in BENDS:
        print(f"  bend: {b}")


if __name__ == "__main__":
    main()
