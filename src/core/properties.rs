//! The vocabulary of JSON import properties as the write path maps them onto the contact
//! resource: core scalars, phones by kind, address parts by kind. No I/O; imports nothing.

/// The core scalar properties a PUT overwrites.
pub const CORE_SCALARS: &[&str] = &[
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "anniversary",
    "birthday_month",
    "birthday_day",
];

/// The properties a `null` may clear (through a PUT): everything but `street2`.
pub fn clearable(prop: &str) -> bool {
    prop != "street2"
        && !prop.ends_with("_street2")
        && (CORE_SCALARS.contains(&prop)
            || prop.starts_with("cf:")
            || phone_kind(prop).is_some()
            || address_part(prop).is_some())
}

/// The phone kind an import phone property writes.
pub fn phone_kind(prop: &str) -> Option<&'static str> {
    Some(match prop {
        "phone" | "other_phone" => "other",
        "home_phone" => "home",
        "work_phone" => "work",
        "mobile_phone" => "mobile",
        _ => return None,
    })
}

/// (kind, field of the street address) of an import address property.
pub fn address_part(prop: &str) -> Option<(&'static str, &'static str)> {
    let (kind, rest) = if let Some(r) = prop.strip_prefix("home_") {
        ("home", r)
    } else if let Some(r) = prop.strip_prefix("work_") {
        ("work", r)
    } else if let Some(r) = prop.strip_prefix("other_") {
        ("other", r)
    } else {
        ("home", prop)
    };
    let field = match rest {
        "street" => "street",
        "city" => "city",
        "state" => "state",
        "zip" => "postal_code",
        "country" => "country",
        _ => return None,
    };
    Some((kind, field))
}
