//! Benches the sans-IO wire layer: parsing client envelopes (`Parser::parse`) and encoding a
//! `message` frame once per publish (`encode::message`). In-memory only.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::protocol::{encode, parse::Parser};

fn publish_frame(data_len: usize) -> Vec<u8> {
    let pad = "x".repeat(data_len);
    format!(
        r#"{{"type":"publish","channel":"room/lobby","requestId":"r-1","data":{{"text":"{pad}"}}}}"#
    )
    .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let frames = [
        (
            "subscribe",
            br#"{"type":"subscribe","channel":"room/lobby","requestId":"s1"}"#.to_vec(),
        ),
        ("publish_64B", publish_frame(64)),
        ("publish_4KiB", publish_frame(4096)),
        (
            "send",
            br#"{"type":"send","to":"bob","data":{"n":1,"ok":true}}"#.to_vec(),
        ),
    ];
    for (name, frame) in frames {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        let mut p = Parser::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                let m = p.parse(black_box(&frame)).map(|m| m.type_str());
                black_box(m.is_ok());
            })
        });
    }
    g.finish();
}

fn encode_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_message");
    for len in [64usize, 1024, 16 * 1024] {
        let data = format!(r#"{{"text":"{}"}}"#, "y".repeat(len.saturating_sub(11)));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("data_{len}B"), |b| {
            b.iter(|| {
                black_box(encode::message(
                    "room/lobby",
                    "alice",
                    black_box(data.as_bytes()),
                    None,
                ))
            })
        });
        let meta = br#"{"name":"Alice","role":"admin"}"#;
        g.bench_function(format!("data_{len}B_with_metadata"), |b| {
            b.iter_batched(
                || data.clone(),
                |d| {
                    black_box(encode::message(
                        "room/lobby",
                        "alice",
                        d.as_bytes(),
                        Some(meta),
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, parse, encode_message);
criterion_main!(benches);
