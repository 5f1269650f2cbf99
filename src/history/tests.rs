use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::protocol::encode::history::{message, payload};

const RULE: HistoryRule = HistoryRule {
    size: 5,
    ttl_secs: 10,
};

fn ch(s: &str) -> Arc<str> {
    Arc::from(s)
}

/// Publishes `data` on `c` like the owner shard does; returns the offset.
fn publish(h: &mut Histories, c: &Arc<str>, data: &str, meta: Option<&str>, now: Instant) -> u64 {
    let (off, _frame) = h.append(
        AppId(0),
        c,
        RULE,
        "pub\"1",
        meta.map(str::len),
        now,
        |off| {
            (
                off,
                message(c, "pub\"1", off, data.as_bytes(), meta.map(str::as_bytes)),
            )
        },
        |(_, f)| f,
    );
    off
}

fn offsets(frames: &[Bytes]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            serde_json::from_slice::<Value>(payload(f)).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn offsets_are_gap_free_and_size_bounds_the_ring() {
    let mut h = Histories::new(0, 1 << 30);
    let c = ch("runs/1");
    let t = Instant::now();
    for i in 1..=8 {
        assert_eq!(publish(&mut h, &c, &i.to_string(), None, t), i);
    }
    assert_eq!(h.messages(), 5);
    assert_eq!(h.evictions[HistoryEviction::Size as usize], 3);
    let r = h.resume(AppId(0), &c, RULE, None, false, t);
    assert_eq!((r.last, r.recovered, r.frames.len()), (8, None, 0));
    let since = Since {
        epoch: r.epoch.to_string().into(),
        offset: 5,
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&since), false, t);
    assert_eq!(r.recovered, Some(true));
    assert_eq!(offsets(&r.frames), [6, 7, 8]);
    let old = Since {
        offset: 2,
        ..since.clone()
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&old), false, t);
    assert_eq!(r.recovered, Some(false), "3 is gone");
    assert_eq!(offsets(&r.frames), [4, 5, 6, 7, 8]);
    let edge = Since {
        offset: 3,
        ..since.clone()
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&edge), false, t);
    assert_eq!(r.recovered, Some(true), "4..8 all retained");
    let now = Since {
        offset: 8,
        ..since.clone()
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&now), false, t);
    assert_eq!((r.recovered, r.frames.len()), (Some(true), 0));
    let ahead = Since {
        offset: 9,
        ..since.clone()
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&ahead), false, t);
    assert_eq!((r.recovered, r.frames.len()), (Some(false), 0));
    let other = Since {
        epoch: "nope".into(),
        offset: 8,
    };
    let r = h.resume(AppId(0), &c, RULE, Some(&other), false, t);
    assert_eq!(r.recovered, Some(false));
    assert_eq!(
        offsets(&r.frames),
        [4, 5, 6, 7, 8],
        "another epoch: everything"
    );
}

#[test]
fn metadata_is_stripped_or_kept_per_subscriber_and_listed_by_query() {
    let mut h = Histories::new(0, 1 << 30);
    let c = ch("a\\b");
    let t = Instant::now();
    publish(&mut h, &c, r#"{"x":[1,"}"]}"#, Some(r#"{"role":"bot"}"#), t);
    publish(&mut h, &c, "null", None, t);
    let since = Since {
        epoch: h
            .resume(AppId(0), &c, RULE, None, false, t)
            .epoch
            .to_string()
            .into(),
        offset: 0,
    };
    let plain = h.resume(AppId(0), &c, RULE, Some(&since), false, t);
    let v: Value = serde_json::from_slice(payload(&plain.frames[0])).unwrap();
    assert_eq!(
        v,
        json!({"type":"message","channel":"a\\b","from":"pub\"1","offset":1,"data":{"x":[1,"}"]}})
    );
    let meta = h.resume(AppId(0), &c, RULE, Some(&since), true, t);
    let v: Value = serde_json::from_slice(payload(&meta.frames[0])).unwrap();
    assert_eq!(v["fromMetadata"], json!({"role":"bot"}));
    let list = h.query(AppId(0), &c, RULE, None, 100, t, |e, last, items| {
        let b = enc::history_body(&c, e, last, items);
        serde_json::from_slice::<Value>(&b).unwrap()
    });
    assert_eq!(
        list["messages"],
        json!([
            {"offset":1,"from":"pub\"1","data":{"x":[1,"}"]},"fromMetadata":{"role":"bot"}},
            {"offset":2,"from":"pub\"1","data":null}
        ])
    );
    let after = h.query(AppId(0), &c, RULE, Some(1), 100, t, |_, _, items| {
        items.iter().map(|i| i.offset).collect::<Vec<_>>()
    });
    assert_eq!(after, [2]);
    let oldest = h.query(AppId(0), &c, RULE, None, 1, t, |_, _, items| items.len());
    assert_eq!(oldest, 1);
}

#[test]
fn ttl_expires_and_sweep_drops_idle_records() {
    let mut h = Histories::new(0, 1 << 30);
    let c = ch("t");
    let t0 = Instant::now();
    publish(&mut h, &c, "1", None, t0);
    let later = t0 + Duration::from_secs(11);
    let n = h.query(AppId(0), &c, RULE, None, 100, later, |_, last, items| {
        (last, items.len())
    });
    assert_eq!(n, (1, 0), "the offset stays, the entry is gone");
    assert_eq!(h.evictions[HistoryEviction::Ttl as usize], 1);
    h.sweep(later, |_, _| true);
    assert_eq!(h.channels(), 1, "kept while subscribed");
    h.sweep(later, |_, _| false);
    assert_eq!(h.channels(), 0);
    assert_eq!((h.messages(), h.bytes()), (0, 0));
}

#[test]
fn memory_share_evicts_the_largest_history_first() {
    let t = Instant::now();
    let big = ch("big");
    let small = ch("small");
    let mut probe = Histories::new(0, 1 << 30);
    publish(&mut probe, &big, "1", None, t);
    let one = probe.bytes();
    // Room for 6 entries: 4 on `big`, 2 on `small`, then 2 more on `big`.
    let mut h = Histories::new(0, 6 * one + one / 2);
    for _ in 0..4 {
        publish(&mut h, &big, "1", None, t);
    }
    for _ in 0..2 {
        publish(&mut h, &small, "1", None, t);
    }
    assert_eq!(h.evictions[HistoryEviction::Memory as usize], 0);
    publish(&mut h, &big, "1", None, t);
    assert!(h.bytes() <= 6 * one + one / 2);
    assert!(h.evictions[HistoryEviction::Memory as usize] >= 1);
    let small_left = h.query(AppId(0), &small, RULE, None, 100, t, |_, _, i| i.len());
    assert_eq!(small_left, 2, "the small history is untouched");
}

#[test]
fn an_epoch_is_new_for_each_record() {
    let mut h = Histories::new(3, 1 << 30);
    let c = ch("e");
    let t = Instant::now();
    let e1 = h.resume(AppId(0), &c, RULE, None, false, t).epoch;
    h.sweep(t, |_, _| false);
    let e2 = h.resume(AppId(0), &c, RULE, None, false, t).epoch;
    assert_ne!(e1, e2);
    assert!(e1.len() <= 64);
}

#[test]
fn an_entry_is_20_bytes() {
    assert_eq!(std::mem::size_of::<Entry>(), 20);
}
