//! Webhook deliveries: signature check and payload reading.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| codex_runner::fuzzing::webhook(data));
