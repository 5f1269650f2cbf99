use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// Members carry the index of their pattern in the test's list as the handle.
fn member(conn: u64, pat: usize) -> Member<usize> {
    Member {
        conn: ConnId(conn),
        include_meta: false,
        handle: pat,
    }
}

fn matched(idx: &PatternIndex<usize>, app: AppId, ch: &str) -> BTreeSet<(u64, usize)> {
    let mut out = BTreeSet::new();
    idx.for_each_match(app, ch, |m| {
        assert!(out.insert((m.conn.0, m.handle)), "reported twice: {m:?}");
    });
    out
}

#[test]
fn whole_segment_wildcards() {
    let mut idx = PatternIndex::new(1);
    let app = AppId(0);
    let pats = [
        "x/*", "x/**", "x/*/c", "x/**/c", "**", "*", "x//y", "a\\*b/*",
    ];
    for (i, p) in pats.iter().enumerate() {
        assert_eq!(idx.insert(app, p, member(1, i)), Ok(true));
    }
    let got = |ch: &str| -> Vec<&str> {
        matched(&idx, app, ch)
            .into_iter()
            .map(|(_, i)| pats[i])
            .collect()
    };
    assert_eq!(got("x/a"), ["x/*", "x/**", "**"]);
    assert_eq!(got("x/"), ["x/*", "x/**", "**"]);
    assert_eq!(got("x/a/b"), ["x/**", "**"]);
    assert_eq!(got("x/a/c"), ["x/**", "x/*/c", "x/**/c", "**"]);
    assert_eq!(got("x/a/b/c"), ["x/**", "x/**/c", "**"]);
    assert_eq!(got("x"), ["**", "*"]);
    assert_eq!(got("x//y"), ["x/**", "**", "x//y"]);
    assert_eq!(got("a*b/q"), ["**", "a\\*b/*"]);
    assert_eq!(got("y/a"), ["**"]);
}

#[test]
fn mixed_segments_go_to_residuals() {
    let mut idx = PatternIndex::new(1);
    let app = AppId(0);
    let pats = ["x/b-*", "x/**.md", "x*", "x/*/y-*/z"];
    for (i, p) in pats.iter().enumerate() {
        assert_eq!(idx.insert(app, p, member(1, i)), Ok(true));
    }
    let got = |ch: &str| -> Vec<&str> {
        matched(&idx, app, ch)
            .into_iter()
            .map(|(_, i)| pats[i])
            .collect()
    };
    assert_eq!(got("x/b-1"), ["x/b-*"]);
    assert_eq!(got("x/d/e.md"), ["x/**.md"]);
    assert_eq!(got("xyz"), ["x*"]);
    assert_eq!(got("x/q/y-1/z"), ["x/*/y-*/z"]);
    assert_eq!(got("x/q/y-1/z/"), Vec::<&str>::new());
}

#[test]
fn resubscribe_replaces_and_remove_prunes_everything() {
    let mut idx = PatternIndex::new(2);
    let pats = ["x/*", "x/**", "x/*/c", "x/**/c", "**", "a/b-*", "a/b/c/d"];
    for conn in 0..50u64 {
        for (i, p) in pats.iter().enumerate() {
            let app = AppId((conn % 2) as u16);
            assert_eq!(idx.insert(app, p, member(conn, i)), Ok(true));
        }
    }
    assert_eq!(idx.len(), 50 * pats.len());
    // Re-subscribing is not new; it replaces the member (include_meta here).
    let again = Member {
        conn: ConnId(0),
        include_meta: true,
        handle: 0,
    };
    assert_eq!(idx.insert(AppId(0), "x/*", again), Ok(false));
    let mut meta = false;
    idx.for_each_match(AppId(0), "x/q", |m| {
        meta |= m.conn == ConnId(0) && m.include_meta
    });
    assert!(meta);
    assert_eq!(idx.len(), 50 * pats.len());
    assert!(idx.node_count() > 2);
    // Removing what is not there is a no-op.
    assert!(idx.remove(AppId(0), "x/*", ConnId(1)).is_none());
    assert!(idx.remove(AppId(0), "nope/**", ConnId(0)).is_none());
    for conn in 0..50u64 {
        for p in pats {
            let app = AppId((conn % 2) as u16);
            assert!(idx.remove(app, p, ConnId(conn)).is_some(), "{p} {conn}");
        }
    }
    assert!(idx.is_empty());
    assert_eq!(idx.node_count(), 2, "only the roots are left");
    assert!(idx
        .apps
        .iter()
        .all(|t| t.nodes.len() == 1 && t.free.is_empty()));
    assert!(matched(&idx, AppId(0), "x/a").is_empty());
}

#[test]
fn partial_removal_prunes_only_empty_branches() {
    let mut idx = PatternIndex::new(1);
    let app = AppId(0);
    idx.insert(app, "a/b/c", member(1, 0)).unwrap();
    idx.insert(app, "a/b", member(2, 1)).unwrap();
    idx.insert(app, "a/x/**", member(3, 2)).unwrap();
    assert_eq!(idx.node_count(), 6); // root, a, b, c, x, **
    idx.remove(app, "a/b/c", ConnId(1)).unwrap();
    assert_eq!(idx.node_count(), 5);
    idx.remove(app, "a/x/**", ConnId(3)).unwrap();
    assert_eq!(idx.node_count(), 3);
    assert_eq!(
        matched(&idx, app, "a/b").into_iter().collect::<Vec<_>>(),
        [(2, 1)]
    );
    idx.remove(app, "a/b", ConnId(2)).unwrap();
    assert_eq!(idx.node_count(), 1);
}

#[test]
fn compaction_keeps_the_matches() {
    let mut idx = PatternIndex::new(1);
    let app = AppId(0);
    for i in 0..1000u64 {
        idx.insert(app, &format!("t{i}/**"), member(i, i as usize))
            .unwrap();
    }
    idx.insert(app, "keep/*/x", member(5000, 5000)).unwrap();
    for i in 0..1000u64 {
        idx.remove(app, &format!("t{i}/**"), ConnId(i)).unwrap();
    }
    let before = idx.apps[0].nodes.len();
    idx.shrink();
    assert!(idx.apps[0].nodes.len() < before / 4);
    assert_eq!(idx.node_count(), 4);
    assert_eq!(
        matched(&idx, app, "keep/q/x")
            .into_iter()
            .collect::<Vec<_>>(),
        [(5000, 5000)]
    );
    idx.remove(app, "keep/*/x", ConnId(5000)).unwrap();
    assert_eq!(idx.node_count(), 1);
}

/// The claim of the design: the cost of matching one publication does not grow with the
/// number of pattern subscriptions that do not match it.
#[test]
fn cost_does_not_grow_with_non_matching_patterns() {
    let visits = |n: u64| {
        let mut idx = PatternIndex::new(1);
        let app = AppId(0);
        idx.insert(app, "room/*", member(u64::MAX, 0)).unwrap();
        idx.insert(app, "room/**", member(u64::MAX - 1, 1)).unwrap();
        for i in 0..n {
            idx.insert(app, &format!("other{i}/**"), member(i, 2))
                .unwrap();
            idx.insert(app, &format!("room/x/other{i}"), member(i, 3))
                .unwrap();
        }
        let mut hits = 0;
        let v = idx.for_each_match(app, "room/y", |_| hits += 1);
        assert_eq!(hits, 2);
        v
    };
    let (small, large) = (visits(10), visits(10_000));
    assert_eq!(
        small, large,
        "visited nodes: {small} with 10, {large} with 10,000"
    );
}

fn pattern_src() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => Just("a"), 2 => Just("b"), 4 => Just("/"), 3 => Just("*"),
            2 => Just("**"), 1 => Just("\\*"), 1 => Just("/*/"), 1 => Just("/**/"),
        ],
        1..8,
    )
    .prop_map(|parts| parts.concat())
    .prop_filter("valid glob", |s| Pattern::parse(s).is_ok())
}

proptest! {
    /// The trie reports exactly the (pattern, connection) pairs whose glob matches
    /// (`Pattern::matches` of src/auth/glob.rs is the reference), each once, and removing
    /// everything leaves only the root.
    #[test]
    fn agrees_with_the_glob_matcher(
        pats in prop::collection::vec((pattern_src(), 0u64..4), 1..24),
        chans in prop::collection::vec("[ab/*]{0,8}", 1..16),
    ) {
        let mut idx = PatternIndex::new(1);
        let app = AppId(0);
        let mut model = BTreeSet::new();
        for (i, (p, conn)) in pats.iter().enumerate() {
            // A connection subscribes a given pattern text once: later duplicates replace.
            let first = pats[..i].iter().position(|(q, c)| q == p && c == conn).unwrap_or(i);
            let new = idx.insert(app, p, member(*conn, first)).unwrap();
            prop_assert_eq!(new, first == i);
            model.insert((p.clone(), *conn));
        }
        for ch in &chans {
            let want: BTreeSet<(u64, String)> = model
                .iter()
                .filter(|(p, _)| Pattern::parse(p).unwrap().matches(ch))
                .map(|(p, c)| (*c, p.clone()))
                .collect();
            let got: BTreeSet<(u64, String)> = matched(&idx, app, ch)
                .into_iter()
                .map(|(c, i)| (c, pats[i].0.clone()))
                .collect();
            prop_assert_eq!(got, want, "channel {:?}", ch);
        }
        for (p, conn) in &model {
            prop_assert!(idx.remove(app, p, ConnId(*conn)).is_some());
        }
        prop_assert!(idx.is_empty());
        prop_assert_eq!(idx.node_count(), 1);
    }
}

/// Timing of one match (not an assertion; run with `--ignored --nocapture` in release).
#[test]
#[ignore]
fn match_timing() {
    for n in [10u64, 10_000] {
        let mut idx = PatternIndex::new(1);
        let app = AppId(0);
        idx.insert(app, "room/*", member(u64::MAX, 0)).unwrap();
        for i in 0..n {
            idx.insert(app, &format!("other{i}/**"), member(i, 1))
                .unwrap();
        }
        let rounds = 1_000_000;
        let start = std::time::Instant::now();
        let mut hits = 0usize;
        for _ in 0..rounds {
            idx.for_each_match(app, std::hint::black_box("room/y"), |_| hits += 1);
        }
        let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(hits, rounds);
        println!("{n} non-matching patterns: {ns:.1} ns per publication");
    }
}

#[test]
fn residuals_are_indexed_by_their_literal_prefix() {
    assert_eq!(super::literal_prefix("oI-*"), "oI-");
    assert_eq!(super::literal_prefix(r"a\*b*c"), "a*b");
    assert_eq!(super::literal_prefix("*.md"), "");
    assert_eq!(super::literal_prefix("x**"), "x");
    let mut t: PatternIndex<()> = PatternIndex::new(1);
    for i in 0..1000 {
        let m = Member {
            conn: ConnId(i),
            include_meta: false,
            handle: (),
        };
        t.insert(AppId(0), &format!("pat/p{i}-*"), m).unwrap();
    }
    let m = Member {
        conn: ConnId(5000),
        include_meta: false,
        handle: (),
    };
    t.insert(AppId(0), "pat/*-x", m).unwrap();
    let mut got = Vec::new();
    t.for_each_match(AppId(0), "pat/p17-abc", |m| got.push(m.conn.0));
    assert_eq!(got, [17]);
    got.clear();
    t.for_each_match(AppId(0), "pat/p17-x", |m| got.push(m.conn.0));
    got.sort();
    assert_eq!(got, [17, 5000]);
    got.clear();
    t.for_each_match(AppId(0), "pat/zzz", |m| got.push(m.conn.0));
    assert!(got.is_empty());
    for i in 0..1000 {
        assert!(t
            .remove(AppId(0), &format!("pat/p{i}-*"), ConnId(i))
            .is_some());
    }
    assert!(t.remove(AppId(0), "pat/*-x", ConnId(5000)).is_some());
    assert_eq!(t.branch_nodes(), 0);
}
