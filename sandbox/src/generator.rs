//! Deterministic test data (contacts, lists, custom fields, tags) from a seed.

use chrono::Duration;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::state::{
    Account, Contact, ContactCore, ContactSubs, CustomFieldDef, CustomFieldValue, EmailAddress,
    ListRec, PhoneNumber, StreetAddress, Ts,
};

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yara", "zoe",
    "liam", "noah", "emma", "ava", "mia", "lucas", "ethan", "sofia", "amir", "chen", "fatima",
    "hiro", "ingrid", "jorge", "kwame", "lena", "mateo", "nora", "omar",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "nguyen",
    "hill",
    "flores",
    "green",
];
const TITLES: &[&str] = &[
    "Engineer",
    "Manager",
    "Director",
    "Designer",
    "Analyst",
    "Consultant",
    "Accountant",
    "Teacher",
    "Nurse",
    "Sales Lead",
    "Owner",
    "Volunteer",
];
const COMPANIES: &[&str] = &[
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay Industries",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
    "Wonka Ltd",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "02108"),
    ("Waltham", "MA", "02451"),
    ("Denver", "CO", "80202"),
    ("Austin", "TX", "73301"),
    ("Portland", "OR", "97201"),
    ("Chicago", "IL", "60601"),
    ("Seattle", "WA", "98101"),
    ("Miami", "FL", "33101"),
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Elm St",
    "Pine Rd",
    "Cedar Ln",
    "Park Blvd",
    "Lake Way",
];
const LIST_NAMES: &[&str] = &[
    "Newsletter",
    "Customers",
    "Prospects",
    "Volunteers",
    "Donors",
    "Events",
    "VIP",
    "Partners",
    "Webinar Attendees",
    "Beta Testers",
];
const CUSTOM_FIELDS: &[&str] = &[
    "favorite_color",
    "member_level",
    "referral_code",
    "shirt_size",
    "region",
];
const CF_VALUES: &[&str] = &[
    "red", "blue", "gold", "silver", "XL", "M", "north", "south", "A1", "B7",
];

pub(crate) fn uuid_from(rng: &mut StdRng) -> Uuid {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// Ensures the account has 5 custom field definitions (deterministic ids).
pub(crate) fn ensure_custom_fields(acct: &mut Account, seed: u64, now: Ts) {
    if !acct.custom_fields.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FF_EE00_DEAD_BEEF);
    for name in CUSTOM_FIELDS {
        acct.custom_fields.push(CustomFieldDef {
            custom_field_id: uuid_from(&mut rng),
            name: (*name).to_string(),
            label: name.replace('_', " "),
            field_type: "string".into(),
            created_at: now,
            updated_at: now,
            import_drops_silently: false,
        });
    }
    for _ in 0..6 {
        acct.tags.push(uuid_from(&mut rng));
    }
}

/// Adds `lists` lists and `contacts` contacts to the account, deterministically from `seed`.
pub(crate) fn generate(acct: &mut Account, contacts: usize, lists: usize, seed: u64, now: Ts) {
    let mut rng = StdRng::seed_from_u64(seed);
    ensure_custom_fields(acct, seed, now);
    let two_years_ms: i64 = 2 * 365 * 24 * 3600 * 1000;

    let mut new_lists = Vec::with_capacity(lists);
    for i in 0..lists {
        let base = LIST_NAMES[i % LIST_NAMES.len()];
        let mut name = if i < LIST_NAMES.len() {
            base.to_string()
        } else {
            format!("{base} {}", i / LIST_NAMES.len() + 1)
        };
        while acct.lists.values().any(|l| l.name == name) {
            name.push('+');
        }
        let created = now - Duration::milliseconds(rng.random_range(0..two_years_ms));
        let updated = created
            + Duration::milliseconds(rng.random_range(0..=(now - created).num_milliseconds()));
        let id = uuid_from(&mut rng);
        acct.lists.insert(
            id,
            ListRec {
                list_id: id,
                description: Some(format!("Sandbox list {name}")),
                name,
                favorite: rng.random_bool(0.2),
                created_at: created,
                updated_at: updated,
                deleted_at: None,
                membership_count: None,
            },
        );
        new_lists.push(id);
    }
    let all_lists: Vec<Uuid> = if new_lists.is_empty() {
        acct.lists
            .values()
            .filter(|l| l.deleted_at.is_none())
            .map(|l| l.list_id)
            .collect()
    } else {
        new_lists
    };
    let cfs: Vec<Uuid> = acct
        .custom_fields
        .iter()
        .map(|c| c.custom_field_id)
        .collect();
    let tags = acct.tags.clone();

    let start_n = acct.contacts.len();
    for i in 0..contacts {
        let n = start_n + i;
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        let mut email = format!("{first}.{last}.{n}@example.com");
        if acct.by_email.contains_key(&email) {
            email = format!("{first}.{last}.{n}.{seed}@example.com");
        }
        let created = now - Duration::milliseconds(rng.random_range(0..two_years_ms));
        let span = (now - created).num_milliseconds().max(0);
        let updated = created + Duration::milliseconds(rng.random_range(0..=span));
        let unsub = rng.random_bool(0.05);
        let explicit = rng.random_bool(0.5);
        let email_updated = if unsub {
            updated
                + Duration::milliseconds(rng.random_range(0..=(now - updated).num_milliseconds()))
        } else {
            created
        };
        let email_address = EmailAddress {
            address: email,
            permission_to_send: if unsub {
                "unsubscribed".into()
            } else if explicit {
                "explicit".into()
            } else {
                "implicit".into()
            },
            created_at: created,
            updated_at: email_updated,
            opt_in_source: Some(if explicit { "Contact" } else { "Account" }.into()),
            opt_in_date: Some(created),
            opt_out_source: unsub.then(|| "Contact".to_string()),
            opt_out_date: unsub.then_some(email_updated),
            opt_out_reason: if unsub && rng.random_bool(0.5) {
                Some("Too many emails".into())
            } else {
                None
            },
            confirm_status: "off".into(),
        };
        let birthday = rng.random_bool(0.3);
        let (bm, bd) = if birthday {
            (
                Some(rng.random_range(1..=12i64)),
                Some(rng.random_range(1..=28i64)),
            )
        } else {
            (None, None)
        };
        let anniversary = if rng.random_bool(0.1) {
            Some(format!(
                "{:04}-{:02}-{:02}",
                rng.random_range(1990..2024),
                rng.random_range(1..=12),
                rng.random_range(1..=28)
            ))
        } else {
            None
        };
        let core = ContactCore {
            contact_id: uuid_from(&mut rng),
            email_address,
            first_name: Some(capitalize(first)),
            last_name: Some(capitalize(last)),
            job_title: rng
                .random_bool(0.7)
                .then(|| pick(&mut rng, TITLES).to_string()),
            company_name: rng
                .random_bool(0.7)
                .then(|| pick(&mut rng, COMPANIES).to_string()),
            birthday_month: bm,
            birthday_day: bd,
            anniversary,
            create_source: if explicit { "Contact" } else { "Account" }.into(),
            update_source: "Account".into(),
            created_at: created,
            updated_at: updated,
            deleted_at: None,
        };
        let mut subs = ContactSubs::default();
        let kinds = ["home", "work", "mobile", "other"];
        let nphones = rng.random_range(0..=3usize);
        for kind in kinds.iter().take(nphones) {
            subs.phone_numbers.push(PhoneNumber {
                phone_number_id: uuid_from(&mut rng),
                phone_number: format!(
                    "+1 555-{:03}-{:04}",
                    rng.random_range(100..1000),
                    rng.random_range(0..10000)
                ),
                kind: (*kind).to_string(),
                created_at: created,
                updated_at: created,
                update_source: "Account".into(),
                create_source: "Account".into(),
            });
        }
        let akinds = ["home", "work", "other"];
        let naddr = rng.random_range(0..=2usize);
        for kind in akinds.iter().take(naddr) {
            let (city, state, zip) = CITIES[rng.random_range(0..CITIES.len())];
            subs.street_addresses.push(StreetAddress {
                street_address_id: uuid_from(&mut rng),
                kind: (*kind).to_string(),
                street: Some(format!(
                    "{} {}",
                    rng.random_range(1..9999),
                    pick(&mut rng, STREETS)
                )),
                city: Some(city.into()),
                state: Some(state.into()),
                postal_code: Some(zip.into()),
                country: Some("US".into()),
                created_at: created,
                updated_at: created,
            });
        }
        if !cfs.is_empty() {
            let ncf = rng.random_range(1..=3usize).min(cfs.len());
            let startcf = rng.random_range(0..cfs.len());
            for k in 0..ncf {
                subs.custom_fields.push(CustomFieldValue {
                    custom_field_id: cfs[(startcf + k) % cfs.len()],
                    value: Some(pick(&mut rng, CF_VALUES).to_string()),
                });
            }
        }
        if !tags.is_empty() && rng.random_bool(0.3) {
            subs.taggings.push(tags[rng.random_range(0..tags.len())]);
        }
        if !all_lists.is_empty() {
            let nl = rng.random_range(1..=3usize).min(all_lists.len());
            let startl = rng.random_range(0..all_lists.len());
            for k in 0..nl {
                subs.list_memberships
                    .push(all_lists[(startl + k) % all_lists.len()]);
            }
        }
        acct.insert_contact(Contact { core, subs });
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
