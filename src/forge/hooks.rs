//! The repository's webhooks: list, create or update the one pointing here, delete.

use serde_json::json;

use super::{ForgeError, GitHub};

impl GitHub {
    /// The repository's webhooks as `(id, url)`.
    pub async fn hooks(&self) -> Result<Vec<(u64, String)>, ForgeError> {
        let list = self
            .call("GET", &format!("{}/hooks", self.base()), None)
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h["id"].as_u64()?, h["config"]["url"].as_str()?.to_string())))
            .collect())
    }

    /// Point a webhook at `url` for push and pull_request events signed with `secret`:
    /// the one already at that URL is updated, so registering twice leaves one hook.
    pub async fn upsert_hook(&self, url: &str, secret: &str) -> Result<u64, ForgeError> {
        let body = json!({
            "name": "web",
            "active": true,
            "events": ["push", "pull_request"],
            "config": {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"},
        });
        let existing = self.hooks().await?.into_iter().find(|(_, u)| u == url);
        let answer = match existing {
            Some((id, _)) => {
                self.call("PATCH", &format!("{}/hooks/{id}", self.base()), Some(body))
                    .await?
            }
            None => {
                self.call("POST", &format!("{}/hooks", self.base()), Some(body))
                    .await?
            }
        };
        answer["id"].as_u64().ok_or_else(|| ForgeError::Refused {
            call: "hooks".into(),
            status: 200,
            message: "the answer has no id".into(),
        })
    }

    /// Ask the forge to ping webhook `id` (signed with its secret, as every delivery is).
    pub async fn ping_hook(&self, id: u64) -> Result<(), ForgeError> {
        self.call("POST", &format!("{}/hooks/{id}/pings", self.base()), None)
            .await
            .map(|_| ())
    }

    /// Delete every webhook pointing at `url`; how many there were.
    pub async fn delete_hooks_to(&self, url: &str) -> Result<usize, ForgeError> {
        let mut n = 0;
        for (id, _) in self.hooks().await?.into_iter().filter(|(_, u)| u == url) {
            self.call("DELETE", &format!("{}/hooks/{id}", self.base()), None)
                .await?;
            n += 1;
        }
        Ok(n)
    }
}
