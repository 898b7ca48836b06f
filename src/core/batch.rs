//! The batcher: the pure core that turns guarded items into `contacts_json_import` bodies.
//! No I/O.
//!
//! Every contact of an import is added to all of the import's `list_ids`, so items are
//! grouped by their exact list set. Each group is cut into bodies of at most `max_contacts`
//! items and at most `max_bytes` bytes, measured on the serialised body itself: the API
//! silently drops whatever lies beyond 4 MB, so a row count alone is not a limit.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::guard::Item;

/// Limits of one import body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_contacts: usize,
    pub max_bytes: usize,
}

/// One import request: its items (in input order within the group) and its exact body.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub list_ids: Vec<Uuid>,
    pub items: Vec<Item>,
    pub body: Vec<u8>,
}

impl Batch {
    pub fn row_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.items.iter().flat_map(|i| i.row_ids.iter().copied())
    }
}

/// What the batcher made of its input.
#[derive(Debug, Default, PartialEq)]
pub struct Batches {
    pub batches: Vec<Batch>,
    /// Items that do not fit in an empty body on their own (cannot happen with validated
    /// rows and the configured minimum of 1 KiB... but never dropped silently).
    pub too_large: Vec<(Item, usize)>,
}

fn body_prefix() -> &'static [u8] {
    b"{\"import_data\":["
}

fn body_suffix(list_ids: &[Uuid]) -> Vec<u8> {
    let ids: Vec<String> = list_ids.iter().map(|l| l.to_string()).collect();
    let mut s = b"],\"list_ids\":".to_vec();
    // Serialising a Vec<String> cannot fail.
    s.extend(serde_json::to_vec(&ids).unwrap_or_default());
    s.push(b'}');
    s
}

/// Groups `items` by list set (groups in order of first appearance) and cuts them under
/// `limits`.
pub fn cut(items: Vec<Item>, limits: Limits) -> Batches {
    let mut order: Vec<BTreeSet<Uuid>> = Vec::new();
    let mut groups: BTreeMap<BTreeSet<Uuid>, Vec<Item>> = BTreeMap::new();
    for it in items {
        if !groups.contains_key(&it.list_ids) {
            order.push(it.list_ids.clone());
        }
        groups.entry(it.list_ids.clone()).or_default().push(it);
    }
    let mut out = Batches::default();
    for key in order {
        let Some(group) = groups.remove(&key) else {
            continue;
        };
        let list_ids: Vec<Uuid> = key.into_iter().collect();
        let suffix = body_suffix(&list_ids);
        let empty = body_prefix().len() + suffix.len();
        let mut cur: Vec<Item> = Vec::new();
        let mut cur_body: Vec<u8> = body_prefix().to_vec();
        for it in group {
            let bytes = serde_json::to_vec(&it.to_json()).unwrap_or_default();
            if empty + bytes.len() > limits.max_bytes {
                let size = empty + bytes.len();
                out.too_large.push((it, size));
                continue;
            }
            let sep = usize::from(!cur.is_empty());
            let would = cur_body.len() + sep + bytes.len() + suffix.len();
            if !cur.is_empty() && (cur.len() >= limits.max_contacts || would > limits.max_bytes) {
                cur_body.extend_from_slice(&suffix);
                out.batches.push(Batch {
                    list_ids: list_ids.clone(),
                    items: std::mem::take(&mut cur),
                    body: std::mem::replace(&mut cur_body, body_prefix().to_vec()),
                });
            }
            if !cur.is_empty() {
                cur_body.push(b',');
            }
            cur_body.extend_from_slice(&bytes);
            cur.push(it);
        }
        if !cur.is_empty() {
            cur_body.extend_from_slice(&suffix);
            out.batches.push(Batch {
                list_ids: list_ids.clone(),
                items: cur,
                body: cur_body,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    fn item(n: usize, lists: &[u128], pad: usize) -> Item {
        let mut f = Map::new();
        if pad > 0 {
            f.insert("street".into(), json!("x".repeat(pad)));
        }
        Item {
            email: format!("c{n}@example.com"),
            contact_id: None,
            fields: f,
            list_ids: lists.iter().map(|l| Uuid::from_u128(*l)).collect(),
            row_ids: vec![n as i64],
            notes: vec![],
        }
    }

    fn parsed(b: &Batch) -> Value {
        serde_json::from_slice(&b.body).expect("body is JSON")
    }

    #[test]
    fn groups_by_exact_list_set() {
        let items = vec![
            item(1, &[1], 0),
            item(2, &[1, 2], 0),
            item(3, &[2, 1], 0),
            item(4, &[1], 0),
        ];
        let b = cut(
            items,
            Limits {
                max_contacts: 100,
                max_bytes: 100_000,
            },
        );
        assert_eq!(b.batches.len(), 2);
        assert_eq!(b.batches[0].items.len(), 2);
        assert_eq!(b.batches[1].items.len(), 2);
        let v = parsed(&b.batches[1]);
        assert_eq!(v["list_ids"].as_array().unwrap().len(), 2);
        assert_eq!(v["import_data"][0]["email"], "c2@example.com");
    }

    #[test]
    fn cuts_on_count_and_on_bytes() {
        let items: Vec<Item> = (0..10).map(|n| item(n, &[1], 0)).collect();
        let b = cut(
            items,
            Limits {
                max_contacts: 3,
                max_bytes: 100_000,
            },
        );
        assert_eq!(
            b.batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        let items: Vec<Item> = (0..10).map(|n| item(n, &[1], 200)).collect();
        let b = cut(
            items,
            Limits {
                max_contacts: 100,
                max_bytes: 1_000,
            },
        );
        assert!(b.batches.len() >= 3);
        for x in &b.batches {
            assert!(x.body.len() <= 1_000);
        }
        assert_eq!(b.batches.iter().map(|b| b.items.len()).sum::<usize>(), 10);
    }

    #[test]
    fn an_item_larger_than_a_body_is_reported_not_dropped() {
        let b = cut(
            vec![item(1, &[1], 2_000), item(2, &[1], 0)],
            Limits {
                max_contacts: 10,
                max_bytes: 1_024,
            },
        );
        assert_eq!(b.too_large.len(), 1);
        assert!(b.too_large[0].1 > 1_024);
        assert_eq!(b.batches.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        #[test]
        fn no_batch_exceeds_a_limit_and_no_item_is_lost(
            spec in prop::collection::vec((prop::collection::btree_set(1u128..5, 1..3), 0usize..400), 0..60),
            max_contacts in 1usize..20,
            max_bytes in 1_024usize..6_000,
        ) {
            let items: Vec<Item> = spec.iter().enumerate().map(|(n, (lists, pad))| {
                let l: Vec<u128> = lists.iter().copied().collect();
                item(n, &l, *pad)
            }).collect();
            let b = cut(items.clone(), Limits { max_contacts, max_bytes });
            let mut seen: Vec<i64> = b.batches.iter().flat_map(|x| x.row_ids()).chain(b.too_large.iter().flat_map(|(i, _)| i.row_ids.clone())).collect();
            seen.sort_unstable();
            let expect: Vec<i64> = (0..items.len() as i64).collect();
            prop_assert_eq!(seen, expect);
            for x in &b.batches {
                prop_assert!(!x.items.is_empty());
                prop_assert!(x.items.len() <= max_contacts);
                prop_assert!(x.body.len() <= max_bytes, "{} > {}", x.body.len(), max_bytes);
                let v: Value = serde_json::from_slice(&x.body).unwrap();
                prop_assert_eq!(v["import_data"].as_array().unwrap().len(), x.items.len());
                let lists: Vec<Uuid> = v["list_ids"].as_array().unwrap().iter().map(|s| Uuid::parse_str(s.as_str().unwrap()).unwrap()).collect();
                prop_assert_eq!(&lists, &x.list_ids);
                for it in &x.items {
                    prop_assert_eq!(it.list_ids.iter().copied().collect::<Vec<_>>(), lists.clone());
                }
            }
        }
    }
}
