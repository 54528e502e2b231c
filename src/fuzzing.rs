//! Entry points of the fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`), kept in the
//! library so `tests/it/fuzz_seeds.rs` runs every seed through them on the stable toolchain.
//!
//! Each takes arbitrary bytes, must never panic, and checks what must hold whatever the input.

use crate::contract::request::{parse_request, RequestId};
use crate::contract::MAX_MESSAGE;
use crate::server::{parse_delivery, verify, Delivery};

/// Request parsing: any bytes give a request whose id is safe as a file name, or violations
/// that name the file and stay short.
pub fn request(data: &[u8]) {
    const FILE: &str = "requests/fuzz.yaml";
    match parse_request(FILE, data) {
        Ok(r) => {
            assert!(RequestId::parse(r.id.as_str()).is_ok());
            assert!(!r.id.as_str().contains(['/', '\0']) && !r.id.as_str().starts_with('.'));
            assert!(!r.kind.is_empty());
        }
        Err(v) => {
            assert!(!v.0.is_empty(), "a rejection says why");
            for one in &v.0 {
                assert_eq!(one.file, FILE);
                assert!(one.message.chars().count() <= MAX_MESSAGE + 40);
            }
            assert!(v.0.len() <= crate::contract::request::MAX_SCHEMA_VIOLATIONS + 1);
        }
    }
}

/// Webhook deliveries: the first byte picks the event, the rest is the payload. The
/// signature check refuses what is not signed with the secret, and a delivery only asks for
/// work when its payload says so.
pub fn webhook(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event = ["push", "pull_request", "ping", "issues"][usize::from(pick % 4)];
    let claimed = String::from_utf8_lossy(&body[..body.len().min(71)]);
    // A made-up signature never passes (the chance of guessing an HMAC is nil).
    assert!(!verify(b"fuzz-secret", body, &claimed) || claimed.len() == 71);
    match parse_delivery(event, body, "main", "fuzz-runner") {
        Delivery::Pass => {
            let v: serde_json::Value = serde_json::from_slice(body).expect("a pass needs JSON");
            assert_eq!(event, "push");
            assert_eq!(v["ref"], "refs/heads/main");
        }
        Delivery::Pull { number, head } => {
            let v: serde_json::Value = serde_json::from_slice(body).expect("a pull needs JSON");
            assert_eq!(event, "pull_request");
            assert_eq!(v["number"].as_u64(), Some(number));
            assert_eq!(
                v["pull_request"]["head"]["sha"].as_str(),
                Some(head.as_str())
            );
        }
        Delivery::Ping => assert_eq!(event, "ping"),
        Delivery::Ignored(why) | Delivery::Bad(why) => assert!(!why.is_empty()),
    }
}
