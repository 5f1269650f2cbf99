#![no_main]
//! cargo fuzz run parse_client_msg -- see docs/hardening.md; body and invariants in src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_fuzz::parse_client_msg(data));
