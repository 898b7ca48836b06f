//! Time slices of a large contacts pull: how an `updated_at` range is cut so that several
//! cursor walks can page it at once, and when a slice is worth cutting further.
//!
//! A cursor walk is sequential: one page in flight, so at 600 ms a page a lone walk reaches
//! under 2 of the 4 requests a second the API allows. Slices of the range, each walked by its
//! own cursor, keep enough pages in flight for the pacer to be the only limit.
//!
//! The filters are strict bounds (`updated_after` <, `updated_before` >) and their precision
//! on the live API is not confirmed, so neighbouring slices overlap by [`OVERLAP`]: a contact
//! on a cut is read by at least one of them (at worst by both, which the stale guard makes
//! free of effects). The first slice keeps the range's lower bound (none: open below) and the
//! last its upper bound (none: open above, so a contact that moves forward while the pull
//! runs is still inside a slice).
//!
//! Cutting a slice costs the request that revealed its size (its first page is applied, then
//! re-read by the pieces), so the planner cuts once, into enough pieces, and cuts a piece
//! again only when it turned out far larger than planned (data bunched in time).
//!
//! Where the cuts go: accounts change most recently, so equal widths of time make pieces of
//! very unequal size (at 200,000 generated contacts the newest tenth of the range held a
//! third of them), and each piece far over plan costs a re-cut. The first page is a sample
//! of its slice unless the API returned it in `updated_at` order (the order is not
//! documented), so when its times are in no order the cuts go at its quantiles — pieces of
//! about equal size — and otherwise at equal widths.

use chrono::{DateTime, Duration, Utc};

/// How much neighbouring slices overlap.
pub const OVERLAP: Duration = Duration::seconds(1);

/// The narrowest piece a cut makes (a bulk import stamps thousands of contacts with the same
/// instant; no cut can separate them).
pub const MIN_WIDTH: Duration = Duration::seconds(4);

/// A part of the `updated_at` range: `after < updated_at < before`; `None` is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

impl Slice {
    /// The whole range from `after` on.
    pub fn from(after: Option<DateTime<Utc>>) -> Slice {
        Slice {
            after,
            before: None,
        }
    }

    /// Whether `t` lies inside (strict bounds, like the API's filters).
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.after.is_none_or(|a| t > a) && self.before.is_none_or(|b| t < b)
    }
}

/// What a slice's first page showed: its `contacts_count`, and the `updated_at` of its
/// contacts in the order the page listed them.
#[derive(Debug, Clone, Default)]
pub struct FirstPage {
    pub contacts_count: u64,
    pub times: Vec<DateTime<Utc>>,
}

/// The fewest times on a page for its quantiles to place cuts (below it, equal widths).
pub const MIN_SAMPLE: usize = 50;

impl FirstPage {
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.times.iter().min().copied()
    }

    pub fn latest(&self) -> Option<DateTime<Utc>> {
        self.times.iter().max().copied()
    }

    /// Whether the page's times can stand for its slice: enough of them, and in no order —
    /// between 30 % and 70 % of the neighbours that differ rise. A page sorted by
    /// `updated_at` either way (or nearly) holds one end of the slice, not a sample of it.
    pub fn is_sample(&self) -> bool {
        if self.times.len() < MIN_SAMPLE {
            return false;
        }
        let (mut up, mut down) = (0usize, 0usize);
        for w in self.times.windows(2) {
            match w[0].cmp(&w[1]) {
                std::cmp::Ordering::Less => up += 1,
                std::cmp::Ordering::Greater => down += 1,
                std::cmp::Ordering::Equal => {}
            }
        }
        let moved = up + down;
        moved > 0 && 10 * up >= 3 * moved && 10 * up <= 7 * moved
    }
}

/// How a pull is sliced: pages it plans per piece and the most pieces one cut makes.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub page_size: u64,
    pub target_pages: u64,
    pub max_pieces: u64,
}

/// Pages a walk of `contacts` takes.
pub fn pages(contacts: u64, page_size: u64) -> u64 {
    contacts.div_ceil(page_size.max(1))
}

/// Pages a piece should at least have: each piece ends on a part-filled page and the
/// neighbours overlap, so a piece costs about half a request more than its data; at 25
/// pages that is 2 %.
pub const MIN_PIECE_PAGES: u64 = 25;

/// Walks needed to keep a `rate` requests/s pacer busy when a page takes `latency`
/// seconds: the pages in flight at once, plus two, so a slow answer leaves no gap and the
/// last pieces still fill the pacer while the others have ended.
/// `None` when there is no pacer (every stream allowed).
pub fn streams_needed(rate: f64, latency_s: f64) -> Option<u64> {
    (rate > 0.0 && latency_s.is_finite()).then(|| (rate * latency_s.max(0.0)).ceil() as u64 + 2)
}

impl Plan {
    /// The plan for a pull of `contacts` with `streams` walks at once: at least a piece per
    /// stream, up to two (so the streams end together), none under [`MIN_PIECE_PAGES`]
    /// unless that leaves a stream idle.
    pub fn new(contacts: u64, page_size: u64, streams: u64) -> Plan {
        let streams = streams.max(1);
        let total = pages(contacts, page_size).max(1);
        let pieces = total
            .div_ceil(MIN_PIECE_PAGES)
            .clamp(streams, 2 * streams)
            .min(total);
        Plan {
            page_size: page_size.max(1),
            target_pages: total.div_ceil(pieces),
            max_pieces: pieces,
        }
    }

    /// Pieces the pull's first page asks for: enough that none has more than the target.
    pub fn first_cut(&self, contacts: u64) -> u64 {
        pages(contacts, self.page_size)
            .div_ceil(self.target_pages)
            .clamp(1, self.max_pieces)
    }

    /// Pieces a piece's first page asks for: only a piece over one and a half times the
    /// target is cut again (a cut costs a request), and into few pieces.
    pub fn recut(&self, contacts: u64) -> u64 {
        let p = pages(contacts, self.page_size);
        if 2 * p <= 3 * self.target_pages {
            1
        } else {
            p.div_ceil(self.target_pages).clamp(2, 4)
        }
    }
}

/// Pieces a piece about to be walked should become so that it does not run on alone after
/// the rest of the pull. The streams share the pacer, so every running piece moves at about
/// the same pace and the pull ends when its largest piece does: a piece of `piece_pages`
/// started when `remaining_pages` are left to `streams` walks is cut when it is more than
/// one and a half times its share (`remaining_pages / streams`; a cut costs a request and a
/// part-filled page), into pieces of about that share. A piece of a few
/// pages is never cut for this.
pub fn tail_cut(piece_pages: u64, remaining_pages: u64, streams: u64) -> u64 {
    let share = remaining_pages
        .max(piece_pages)
        .div_ceil(streams.max(1))
        .max(1);
    if piece_pages < 8 || 2 * piece_pages <= 3 * share {
        1
    } else {
        piece_pages.div_ceil(share).clamp(2, 4)
    }
}

/// Cuts `slice` into at most `n` pieces, overlapping by [`OVERLAP`]: at the quantiles of
/// its first page's times when they are a sample ([`FirstPage::is_sample`]), else of equal
/// width between its bounds (an open bound is taken from what its first page showed, or
/// `now` above). No two cuts, nor a cut and a bound, closer than [`MIN_WIDTH`]. One piece
/// (the slice itself) when `n < 2` or the range is too narrow to cut.
pub fn cut(slice: Slice, first: &FirstPage, now: DateTime<Utc>, n: u64) -> Vec<Slice> {
    let lo = slice.after.or(first.earliest());
    let hi = slice
        .before
        .or_else(|| Some(first.latest().map_or(now, |l| l.max(now))));
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return vec![slice];
    };
    let width = hi - lo;
    let fit = (width.num_milliseconds() / MIN_WIDTH.num_milliseconds()).max(0) as u64;
    let n = n.min(fit);
    if n < 2 {
        return vec![slice];
    }
    let candidates: Vec<DateTime<Utc>> = if first.is_sample() {
        let mut sorted = first.times.clone();
        sorted.sort_unstable();
        let m = sorted.len() as u64;
        (1..n).map(|i| sorted[(i * m / n) as usize]).collect()
    } else {
        let step = width.num_milliseconds() / n as i64;
        (1..n as i64)
            .map(|i| lo + Duration::milliseconds(step * i))
            .collect()
    };
    let mut cuts: Vec<DateTime<Utc>> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let prev = cuts.last().copied().unwrap_or(lo);
        if c - prev >= MIN_WIDTH && hi - c >= MIN_WIDTH {
            cuts.push(c);
        }
    }
    if cuts.is_empty() {
        return vec![slice];
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut after = slice.after;
    for c in &cuts {
        out.push(Slice {
            after,
            before: Some(*c),
        });
        after = Some(*c - OVERLAP);
    }
    out.push(Slice {
        after,
        before: slice.before,
    });
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().unwrap()
    }

    #[test]
    fn a_plan_gives_every_stream_a_piece_and_no_piece_too_small_to_pay() {
        // 200,000 contacts, 8 streams: 400 pages, two pieces a stream of 25 pages.
        let p = Plan::new(200_000, 500, 8);
        assert_eq!((p.first_cut(200_000), p.target_pages), (16, 25));
        assert_eq!(p.recut(25 * 500), 1);
        assert_eq!(p.recut(37 * 500), 1);
        assert_eq!(p.recut(38 * 500), 2);
        assert_eq!(p.recut(51 * 500), 3);
        assert_eq!(p.recut(10_000 * 500), 4);
        // 20,000 contacts (40 pages), 4 streams: one piece a stream, 10 pages each.
        let p = Plan::new(20_000, 500, 4);
        assert_eq!((p.first_cut(20_000), p.target_pages), (4, 10));
        // 1,000,000 contacts, 4 streams: 2,000 pages, two pieces a stream.
        let p = Plan::new(1_000_000, 500, 4);
        assert_eq!((p.first_cut(1_000_000), p.target_pages), (8, 250));
        // Never more pieces than pages.
        assert_eq!(Plan::new(1_500, 500, 8).first_cut(1_500), 3);
        assert_eq!(Plan::new(0, 500, 8).first_cut(0), 1);
    }

    #[test]
    fn a_piece_that_would_run_on_alone_at_the_end_is_cut() {
        // 41 pages started with 124 left to 5 streams (a share of 25): cut in two; 37 are
        // within one and a half shares.
        assert_eq!(tail_cut(41, 124, 5), 2);
        assert_eq!(tail_cut(37, 124, 5), 1);
        // Early on, with 300 pages left, the same piece is within its share.
        assert_eq!(tail_cut(41, 300, 5), 1);
        // The last piece of all: as many pieces as streams, at most 4.
        assert_eq!(tail_cut(40, 40, 5), 4);
        assert_eq!(tail_cut(40, 40, 2), 2);
        // A few pages are left whole.
        assert_eq!(tail_cut(7, 7, 5), 1);
    }

    #[test]
    fn streams_follow_the_pages_in_flight_the_pacer_allows() {
        assert_eq!(streams_needed(4.0, 0.6), Some(5));
        assert_eq!(streams_needed(4.0, 0.05), Some(3));
        assert_eq!(streams_needed(40.0, 0.06), Some(5));
        assert_eq!(streams_needed(0.0, 0.6), None);
    }

    #[test]
    fn open_bounds_stay_open_and_neighbours_overlap() {
        let first = FirstPage {
            contacts_count: 10_000,
            times: vec![t(0), t(100)],
        };
        let pieces = cut(Slice::from(None), &first, t(400), 4);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0].after, None);
        assert_eq!(pieces[0].before, Some(t(100)));
        assert_eq!(pieces[1].after, Some(t(100) - OVERLAP));
        assert_eq!(pieces[3].before, None);
        let bounded = Slice {
            after: Some(t(0)),
            before: Some(t(40)),
        };
        let pieces = cut(bounded, &first, t(400), 2);
        assert_eq!(pieces.first().unwrap().after, Some(t(0)));
        assert_eq!(pieces.last().unwrap().before, Some(t(40)));
    }

    #[test]
    fn a_range_too_narrow_or_without_bounds_is_not_cut() {
        let instant = FirstPage {
            contacts_count: 1_000_000,
            times: vec![t(5); 500],
        };
        let s = Slice {
            after: Some(t(4)),
            before: Some(t(6)),
        };
        assert_eq!(cut(s, &instant, t(10), 4), vec![s]);
        let blank = FirstPage::default();
        assert_eq!(
            cut(Slice::from(None), &blank, t(10), 4),
            vec![Slice::from(None)]
        );
        assert_eq!(cut(Slice::from(Some(t(0))), &blank, t(1000), 1).len(), 1);
    }

    /// `n` times from `0..span` seconds whose density grows toward `span` (like an
    /// account's changes), shuffled by `seed` or, with `sorted`, in rising order.
    fn skewed(n: usize, span: i64, seed: u64, sorted: bool) -> Vec<DateTime<Utc>> {
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut out: Vec<DateTime<Utc>> = (0..n)
            .map(|_| t((span as f64 * next().sqrt().sqrt()) as i64))
            .collect();
        if sorted {
            out.sort();
        }
        out
    }

    #[test]
    fn a_page_in_no_order_is_a_sample_and_a_sorted_one_is_not() {
        let page = |sorted| FirstPage {
            contacts_count: 200_000,
            times: skewed(500, 100_000, 7, sorted),
        };
        assert!(page(false).is_sample());
        assert!(!page(true).is_sample());
        let mut falling = page(true);
        falling.times.reverse();
        assert!(!falling.is_sample());
        // Too few times to stand for anything.
        let few = FirstPage {
            contacts_count: 200_000,
            times: skewed(MIN_SAMPLE - 1, 100_000, 7, false),
        };
        assert!(!few.is_sample());
    }

    /// How many of `all` each piece holds.
    fn sizes(pieces: &[Slice], all: &[DateTime<Utc>]) -> Vec<usize> {
        pieces
            .iter()
            .map(|p| all.iter().filter(|x| p.contains(**x)).count())
            .collect()
    }

    #[test]
    fn cuts_at_a_samples_quantiles_make_pieces_of_about_equal_size() {
        // An account of 200,000 whose changes bunch toward now; its first page is 500 of
        // them in no order.
        let all = skewed(200_000, 100_000, 3, false);
        let first = FirstPage {
            contacts_count: 200_000,
            times: all[..500].to_vec(),
        };
        let pieces = cut(Slice::from(None), &first, t(100_000), 10);
        assert_eq!(pieces.len(), 10);
        let got = sizes(&pieces, &all);
        let (lo, hi) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        // Each a tenth, give or take what a sample of 500 can tell (a few per cent).
        assert!(*lo > 14_000 && *hi < 26_000, "{got:?}");
        // Equal widths of the same range: the newest piece holds many times the oldest.
        let sorted = FirstPage {
            contacts_count: 200_000,
            times: skewed(500, 100_000, 3, true),
        };
        let widths = sizes(&cut(Slice::from(None), &sorted, t(100_000), 10), &all);
        assert!(widths[9] > 10 * widths[0], "{widths:?}");
    }

    #[test]
    fn quantile_cuts_keep_the_narrowest_width() {
        // Half the page stamped at one instant (a bulk import): no two cuts closer than
        // MIN_WIDTH, none on the slice's bounds.
        let times: Vec<DateTime<Utc>> = skewed(250, 1_000, 5, false)
            .into_iter()
            .flat_map(|x| [x, t(500)])
            .collect();
        let first = FirstPage {
            contacts_count: 50_000,
            times,
        };
        assert!(first.is_sample());
        let slice = Slice {
            after: Some(t(0)),
            before: Some(t(1_000)),
        };
        let pieces = cut(slice, &first, t(2_000), 8);
        assert!(pieces.len() > 2 && pieces.len() < 8, "{pieces:?}");
        for w in pieces.windows(2) {
            let (a, b) = (w[0].before.unwrap(), w[1].before.unwrap_or(t(1_000)));
            assert!(b - a >= MIN_WIDTH, "{pieces:?}");
        }
    }

    fn opt_t() -> impl Strategy<Value = Option<DateTime<Utc>>> {
        prop::option::of((-100_000i64..100_000).prop_map(t))
    }

    proptest! {
        /// Every instant the slice holds (down to the millisecond) is held by a piece, no
        /// piece holds one outside the slice, and there are at most `n` pieces.
        #[test]
        fn the_pieces_cover_the_slice_exactly(
            a in opt_t(),
            b in opt_t(),
            e in opt_t(),
            l in opt_t(),
            now in (-100_000i64..200_000).prop_map(t),
            n in 0u64..40,
            sample in prop::collection::vec(-150_000i64..150_000, 0..120),
            probes in prop::collection::vec(-300_000_000i64..300_000_000, 1..60),
        ) {
            let slice = Slice { after: a, before: b };
            // Either a page's two extremes (equal widths) or a page in any order.
            let times = if sample.len() >= MIN_SAMPLE {
                sample.iter().map(|s| t(*s)).collect()
            } else {
                e.into_iter().chain(l).collect()
            };
            let first = FirstPage { contacts_count: 1, times };
            let pieces = cut(slice, &first, now, n);
            prop_assert!(!pieces.is_empty());
            prop_assert!(pieces.len() as u64 <= n.max(1));
            let mut instants: Vec<DateTime<Utc>> = probes
                .iter()
                .map(|ms| t(0) + Duration::milliseconds(*ms))
                .collect();
            for p in &pieces {
                for bound in [p.after, p.before].into_iter().flatten() {
                    instants.extend([bound, bound + Duration::milliseconds(1), bound - Duration::milliseconds(1)]);
                }
            }
            for x in instants {
                let held = pieces.iter().any(|p| p.contains(x));
                prop_assert_eq!(held, slice.contains(x), "{:?} in {:?} → {:?}", x, slice, pieces);
            }
            if pieces.len() > 1 {
                for w in pieces.windows(2) {
                    prop_assert_eq!(w[1].after, w[0].before.map(|c| c - OVERLAP));
                }
            }
        }
    }
}
