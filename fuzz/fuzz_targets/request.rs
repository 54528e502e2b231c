//! Request parsing: bytes → checked text → YAML under budget → schema → request or violations.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| codex_runner::fuzzing::request(data));
