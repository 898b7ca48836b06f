//! The pure core of ending an import activity: which of its rows Constant Contact refused
//! (an error names their address or row number) and which it never processed (counters
//! short of the items sent). No I/O: the client's activity is converted at the edge.

use std::collections::HashMap;

/// The `status` counters of an ended import activity (absent ones are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub person_count: Option<u64>,
    pub error_count: Option<u64>,
    pub correctable_count: Option<u64>,
    pub cannot_add_to_list_count: Option<u64>,
}

/// Rows of a completed activity that failed (an error names their address or row number)
/// and rows that were never processed (counters short of the items sent).
#[derive(Debug, Default, PartialEq)]
pub struct Completion {
    pub failed: Vec<(i64, String)>,
    pub unprocessed: Vec<i64>,
}

/// `rows` are (id, email) ascending; the import's items are their distinct addresses in
/// order of first appearance (the order the batcher wrote them).
pub fn map_completion(
    rows: &[(i64, String)],
    messages: &[String],
    counters: &Counters,
) -> Completion {
    let mut items: Vec<&str> = Vec::new();
    let mut by_email: HashMap<&str, Vec<i64>> = HashMap::new();
    for (id, email) in rows {
        let e = email.as_str();
        if !by_email.contains_key(e) {
            items.push(e);
        }
        by_email.entry(e).or_default().push(*id);
    }
    let mut failed: HashMap<i64, String> = HashMap::new();
    for m in messages {
        let lower = m.to_lowercase();
        let mut named: Vec<&str> = items
            .iter()
            .copied()
            .filter(|e| lower.contains(e))
            .collect();
        if named.is_empty() {
            if let Some(n) = row_number(&lower) {
                if let Some(e) = n.checked_sub(1).and_then(|i| items.get(i)) {
                    named.push(e);
                }
            }
        }
        for e in named {
            for id in by_email.get(e).into_iter().flatten() {
                failed
                    .entry(*id)
                    .or_insert_with(|| format!("Constant Contact rejected the contact: {m}"));
            }
        }
    }
    let processed = match (
        counters.person_count,
        counters.error_count.unwrap_or(0),
        counters.correctable_count.unwrap_or(0),
    ) {
        // Counters come from the API: saturate rather than overflow (a panic in a debug
        // build, a wrapped small sum — rows wrongly "never processed" — in a release one).
        (Some(p), e, c) => {
            Some(usize::try_from(p.saturating_add(e).saturating_add(c)).unwrap_or(usize::MAX))
        }
        _ => None,
    };
    let mut unprocessed = Vec::new();
    if let Some(p) = processed.filter(|p| *p < items.len()) {
        for e in &items[p..] {
            for id in by_email.get(e).into_iter().flatten() {
                if !failed.contains_key(id) {
                    unprocessed.push(*id);
                }
            }
        }
    }
    let mut failed: Vec<(i64, String)> = failed.into_iter().collect();
    failed.sort_unstable();
    Completion {
        failed,
        unprocessed,
    }
}

/// `row 12` / `row 12:` in an error message.
fn row_number(lower: &str) -> Option<usize> {
    let at = lower.find("row ")?;
    let digits: String = lower[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_at_the_limit_of_u64_saturate_instead_of_overflowing() {
        let rows = vec![(1, "a@b.c".to_string()), (2, "d@e.f".to_string())];
        let c = Counters {
            person_count: Some(u64::MAX),
            error_count: Some(u64::MAX),
            correctable_count: Some(1),
            ..Counters::default()
        };
        assert_eq!(map_completion(&rows, &[], &c), Completion::default());
    }

    fn act(person: Option<u64>, correctable: Option<u64>) -> Counters {
        Counters {
            person_count: person,
            correctable_count: correctable,
            ..Counters::default()
        }
    }

    #[test]
    fn errors_map_back_by_address_or_row_number() {
        let rows = vec![
            (1, "a@x.io".to_string()),
            (2, "b@x.io".to_string()),
            (3, "a@x.io".to_string()),
            (4, "c@x.io".to_string()),
        ];
        let msgs = vec![
            "Row 2: invalid something".to_string(),
            "Contact C@X.IO is on 50 lists".to_string(),
            "something unrelated".to_string(),
        ];
        let c = map_completion(&rows, &msgs, &act(Some(3), None));
        let ids: Vec<i64> = c.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![2, 4]);
        assert!(c.failed[0].1.contains("Row 2"));
        assert!(c.unprocessed.is_empty());
    }

    #[test]
    fn items_beyond_the_counters_are_unprocessed() {
        let rows = vec![
            (1, "a@x.io".to_string()),
            (2, "b@x.io".to_string()),
            (3, "c@x.io".to_string()),
        ];
        let c = map_completion(&rows, &[], &act(Some(1), Some(0)));
        assert_eq!(c.unprocessed, vec![2, 3]);
        let c = map_completion(&rows, &[], &act(None, None));
        assert!(c.unprocessed.is_empty(), "no counters: nothing inferred");
    }

    #[test]
    fn row_numbers_parse() {
        assert_eq!(row_number("row 12: bad"), Some(12));
        assert_eq!(row_number("no number"), None);
        assert_eq!(row_number("row x"), None);
    }
}
