//! Benches the per-message decisions: channel glob matching (`auth::glob::Pattern::matches`),
//! the per-connection token bucket (`shard::rate_limit::TokenBucket`) and the per-subscriber
//! fan-out step (`router::index::Index` iteration + one `Bytes` clone pushed into each
//! subscriber's queue: no re-encoding, no allocation per subscriber beyond the queue slot).

use std::{
    cell::RefCell, collections::VecDeque, hint::black_box, rc::Rc, sync::Arc, time::Instant,
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::{
    auth::{glob::Pattern, AppId},
    protocol::encode,
    router::{
        index::{Index, PresenceState, Sub},
        ConnId,
    },
    shard::rate_limit::TokenBucket,
};

fn glob(c: &mut Criterion) {
    let mut g = c.benchmark_group("glob_matches");
    let cases = [
        ("literal_hit", "app_abc/room-1", "app_abc/room-1"),
        ("star_hit", "app_abc/*", "app_abc/room-1"),
        ("star_miss_slash", "app_abc/*", "app_abc/a/b"),
        (
            "double_star_deep",
            "workflows/**/events",
            "workflows/run-xyz/step/7/events",
        ),
        (
            "many_stars_miss",
            "a*b*c*d*e*f",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaf",
        ),
    ];
    for (name, pat, ch) in cases {
        let p = Pattern::parse(pat).expect("valid pattern");
        g.bench_function(name, |b| b.iter(|| black_box(p.matches(black_box(ch)))));
    }
    g.finish();
}

fn token_bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_bucket");
    let now = Instant::now();
    g.bench_function("try_take_full", |b| {
        b.iter_batched_ref(
            || TokenBucket::new(100, 200, now),
            |tb| black_box(tb.try_take(black_box(now))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("try_take_refill", |b| {
        let mut tb = TokenBucket::new(1_000_000, 10, now);
        b.iter(|| black_box(tb.try_take(black_box(Instant::now()))))
    });
    g.finish();
}

fn fanout_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_step");
    for n in [1usize, 100, 10_000] {
        // The shard's handle is `Rc<ConnHandle>` (a socket inside); an `Rc<RefCell<VecDeque>>`
        // has the same shape: a shared pointer to a per-connection queue.
        let mut idx: Index<Rc<RefCell<VecDeque<Bytes>>>> = Index::new(1);
        let peer: Arc<str> = Arc::from("peer");
        for i in 0..n {
            idx.insert(
                AppId(0),
                "fan",
                Sub {
                    conn: ConnId(i as u64),
                    peer: peer.clone(),
                    include_meta: false,
                    presence: PresenceState::Ready,
                    awaiting: false,
                    grouped: false,
                    handle: Rc::new(RefCell::new(VecDeque::with_capacity(64))),
                },
            );
        }
        let publisher = ConnId(u64::MAX);
        let frame = encode::message(
            "fan",
            "pub",
            br#"{"g":0,"s":1,"r":0,"t":1,"p":"xxxxxxxxxxxxxxxxxxxxxx"}"#,
            None,
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("subscribers_{n}"), |b| {
            b.iter(|| {
                let subs = idx
                    .get(AppId(0), black_box("fan"))
                    .expect("channel present");
                let mut delivered = 0usize;
                for s in subs.iter() {
                    if s.conn == publisher {
                        continue;
                    }
                    let mut q = s.handle.borrow_mut();
                    q.push_back(frame.clone());
                    delivered += 1;
                    // Keep queues bounded, as the writer would by draining them.
                    if q.len() >= 64 {
                        q.clear();
                    }
                }
                black_box(delivered)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, glob, token_bucket, fanout_step);
criterion_main!(benches);
