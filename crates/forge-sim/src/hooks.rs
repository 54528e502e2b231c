//! Webhook deliveries: GitHub's headers, the HMAC-SHA256 signature, a record of each attempt.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::{lock, Delivery, Shared};

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`, as in `X-Hub-Signature-256`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Send `event` with `payload` to every active hook of `repo` that wants it.
///
/// Deliveries run in the background; each is recorded with the status it got.
pub(crate) fn deliver(state: &Shared, repo: &str, event: &str, payload: Value) {
    deliver_to(state, repo, None, event, payload)
}

/// [`deliver`], to hook `only` alone when given (`POST .../hooks/{id}/pings`).
pub(crate) fn deliver_to(
    state: &Shared,
    repo: &str,
    only: Option<u64>,
    event: &str,
    payload: Value,
) {
    let targets: Vec<(u64, String, Option<String>)> = {
        let st = lock(state);
        let Some(r) = st.repos.get(repo) else { return };
        r.hooks
            .iter()
            .filter(|h| only.is_none_or(|id| id == h.id))
            // GitHub pings a hook whatever events it subscribed to.
            .filter(|h| {
                h.active && (event == "ping" || h.events.iter().any(|e| e == event || e == "*"))
            })
            .map(|h| (h.id, h.url.clone(), h.secret.clone()))
            .collect()
    };
    for (hook_id, url, secret) in targets {
        let state = state.clone();
        let event = event.to_string();
        let payload = payload.clone();
        tokio::spawn(async move {
            let id = {
                let mut st = lock(&state);
                format!("{:08x}-sim-{}", st.next_id(), hook_id)
            };
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let mut req = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .header("user-agent", "GitHub-Hookshot/forge-sim")
                .header("x-github-event", &event)
                .header("x-github-delivery", &id)
                .header("x-github-hook-id", hook_id.to_string());
            if let Some(secret) = &secret {
                req = req.header("x-hub-signature-256", sign(secret, &body));
            }
            let status = match req.body(body).send().await {
                Ok(resp) => Some(resp.status().as_u16()),
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "webhook delivery failed");
                    None
                }
            };
            lock(&state).deliveries.push(Delivery {
                id,
                event,
                hook_id,
                status,
                payload,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
