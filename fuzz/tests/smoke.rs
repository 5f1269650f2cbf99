//! Stable-toolchain smoke run of every fuzz target body (no libFuzzer, no sanitizers): each
//! seed under corpus/<target>/ is replayed, then `RINGCAST_FUZZ_SMOKE_ITERS` (default 20,000)
//! random mutations of the seeds (bit flips, byte insertions/deletions, splices, truncations)
//! per target, from a fixed RNG seed (`RINGCAST_FUZZ_SEED` to vary it).
//!
//!   cargo test --manifest-path fuzz/Cargo.toml --no-default-features --release
//!
//! Real coverage-guided fuzzing: `cargo +nightly fuzz run <target>` (docs/hardening.md).

use std::path::Path;

use rand::{rngs::StdRng, Rng, SeedableRng};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..=8) {
        let len = v.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let i = rng.gen_range(0..=len);
                let b = *[
                    b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'*', b'/', b'\0', 0xff, 0x80,
                    b'\r', b'\n',
                ]
                .get(rng.gen_range(0..16))
                .unwrap_or(&rng.gen());
                v.insert(i, b);
            }
            2 if len > 0 => {
                let i = rng.gen_range(0..len);
                let n = rng.gen_range(1..=(len - i).min(16));
                v.drain(i..i + n);
            }
            3 if len > 0 => {
                // splice: part of another seed
                let other = &seeds[rng.gen_range(0..seeds.len())];
                if !other.is_empty() {
                    let a = rng.gen_range(0..other.len());
                    let b = rng.gen_range(a..=other.len());
                    let at = rng.gen_range(0..=len);
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            4 if len > 0 => v.truncate(rng.gen_range(0..len)),
            5 if len > 0 => {
                // repeat a slice (nesting, floods)
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..=len.min(a + 8));
                let rep: Vec<u8> = v[a..b].repeat(rng.gen_range(1..64));
                v.splice(a..a, rep);
            }
            _ => {
                let i = rng.gen_range(0..=len);
                v.insert(i, rng.gen());
            }
        }
    }
    v
}

fn smoke(target: &str, body: fn(&[u8])) {
    let seeds = seeds(target);
    for s in &seeds {
        body(s);
    }
    let iters: usize = std::env::var("RINGCAST_FUZZ_SMOKE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("RINGCAST_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed ^ target.len() as u64);
    for i in 0..iters {
        let input = mutate(&mut rng, &seeds);
        let r = std::panic::catch_unwind(|| body(&input));
        if r.is_err() {
            panic!("{target}: iteration {i} (seed {seed}) panicked on input {input:?}");
        }
    }
}

#[test]
fn parse_client_msg() {
    smoke("parse_client_msg", ringcast_fuzz::parse_client_msg);
}

#[test]
fn glob_match() {
    smoke("glob_match", ringcast_fuzz::glob_match);
}

#[test]
fn token_verify() {
    smoke("token_verify", ringcast_fuzz::token_verify);
}

#[test]
fn upgrade_parse() {
    smoke("upgrade_parse", ringcast_fuzz::upgrade_parse);
}

#[test]
fn ws_read() {
    smoke("ws_read", ringcast_fuzz::ws_read);
}

#[test]
fn cluster_wire() {
    smoke("cluster_wire", ringcast_fuzz::cluster_wire);
}
