//! One API call with our retry policy: 5xx, 429, secondary rate limits and timeouts are
//! retried with back-off, honouring `Retry-After` and `x-ratelimit-reset`; anything else is
//! final.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use serde_json::Value;

use super::{ForgeError, GitHub};

/// A failure that may pass: retried after `wait` (the forge's own figure) or the back-off.
#[derive(Debug)]
pub(super) struct Transient {
    detail: String,
    wait: Option<Duration>,
}

/// Whether a failed octocrab call may pass when tried again.
pub(super) fn retryable(e: &octocrab::Error) -> bool {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            retryable_status(source.status_code.as_u16(), &source.message)
        }
        _ => true,
    }
}

/// 5xx, 429 and rate-limit 403s may pass; other answers will not.
pub(super) fn retryable_status(status: u16, message: &str) -> bool {
    status >= 500 || status == 429 || (status == 403 && message.contains("rate limit"))
}

/// One attempt: `Err(Ok(_))` may pass, `Err(Err(_))` will not.
pub(super) async fn once(
    client: &Octocrab,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Result<Transient, ForgeError>> {
    {
        let transient =
            |detail: String, wait: Option<Duration>| Err(Ok(Transient { detail, wait }));
        let sent = match method {
            "GET" => client._get(path).await,
            "POST" => client._post(path, body).await,
            "PATCH" => client._patch(path, body).await,
            "DELETE" => client._delete(path, body).await,
            "PUT" => client._put(path, body).await,
            other => {
                return Err(Err(ForgeError::Refused {
                    call: path.into(),
                    status: 0,
                    message: format!("unsupported method {other}"),
                }))
            }
        };
        let response = match sent {
            Ok(r) => r,
            // octocrab answers for the installation token it mints before the call.
            Err(octocrab::Error::GitHub { source, .. })
                if !retryable_status(source.status_code.as_u16(), &source.message) =>
            {
                return Err(Err(ForgeError::Refused {
                    call: format!("{method} {path} (installation token)"),
                    status: source.status_code.as_u16(),
                    message: source.message,
                }))
            }
            Err(octocrab::Error::GitHub { source, .. }) => {
                return transient(
                    format!("{} {}", source.status_code.as_u16(), source.message),
                    None,
                )
            }
            Err(e) => return transient(format!("{e}"), None),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return transient(format!("reading the answer failed: {e}"), None),
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or_default().to_string();
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reset = (header("x-ratelimit-remaining").as_deref() == Some("0"))
            .then(|| header("x-ratelimit-reset").and_then(|s| s.parse::<u64>().ok()))
            .flatten()
            .map(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Duration::from_secs(at.saturating_sub(now).min(3600))
            });
        let rate_limited = status == 429
            || (status == 403
                && (retry_after.is_some() || reset.is_some() || message.contains("rate limit")));
        if status >= 500 || rate_limited {
            return transient(format!("{status} {message}"), retry_after.or(reset));
        }
        Err(Err(ForgeError::Refused {
            call: format!("{method} {path}"),
            status,
            message,
        }))
    }
}

pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl GitHub {
    pub(super) fn base(&self) -> String {
        format!("/repos/{}/{}", self.repo.owner, self.repo.name)
    }

    pub(super) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
    }

    /// One API call with the retry policy; the JSON answer.
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        self.call_with(&self.client, method, path, body).await
    }

    /// [`Self::call`] through `client` (the installation's, or the app's own).
    pub(super) async fn call_with(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        let name = format!("{method} {path}");
        let attempt = || async { once(client, method, path, body.as_ref()).await };
        let metrics = crate::metrics::global();
        let answer = attempt
            .retry(self.backoff())
            .when(|e: &Result<Transient, ForgeError>| e.is_ok())
            .adjust(|e, planned| match e {
                Ok(Transient { wait: Some(w), .. }) => Some(planned.map_or(*w, |p| p.max(*w))),
                _ => planned,
            })
            .notify(|e, wait| {
                if let Ok(t) = e {
                    metrics.forge_retried();
                    tracing::warn!(call = %name, retry_in = ?wait, "forge call failed: {}", t.detail);
                }
            })
            .await;
        metrics.forge_called(match &answer {
            Ok(_) => "ok",
            Err(Ok(_)) => "unavailable",
            Err(Err(_)) => "refused",
        });
        answer.map_err(|e| match e {
            Ok(t) => ForgeError::Unavailable {
                call: name.clone(),
                detail: t.detail,
            },
            Err(refused) => refused,
        })
    }
}
