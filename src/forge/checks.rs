//! Check runs (found by external id or created, then brought up to date, annotations in
//! batches) and commit statuses.

use serde_json::{json, Value};

use super::call::encode;

use super::{Annotation, CheckState, CheckUpdate, Conclusion, ForgeError, GitHub};

/// Annotations GitHub accepts in one check-run request.
pub const ANNOTATIONS_PER_CALL: usize = 50;

pub(super) fn check_body(update: &CheckUpdate, annotations: &[Annotation]) -> Value {
    let mut body = json!({
        "name": update.name,
        "head_sha": update.head_sha,
        "external_id": update.external_id,
        "output": {"title": update.title, "summary": update.summary, "annotations": annotations},
    });
    if let Some(t) = &update.text {
        body["output"]["text"] = json!(t);
    }
    if let Some(u) = &update.details_url {
        body["details_url"] = json!(u);
    }
    if let Some(s) = &update.started_at {
        body["started_at"] = json!(s);
    }
    match update.state {
        CheckState::Queued => body["status"] = json!("queued"),
        CheckState::InProgress => body["status"] = json!("in_progress"),
        CheckState::Completed(c) => {
            body["status"] = json!("completed");
            body["conclusion"] = serde_json::to_value(c).unwrap_or(Value::Null);
        }
    }
    crate::secrets::mask_json(&mut body);
    body
}

impl GitHub {
    /// Make the check run of `update` show it; returns the run's id. `known` skips the lookup.
    pub async fn publish_check(
        &self,
        update: &CheckUpdate,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        let id = match known {
            Some(id) => Some(id),
            None => {
                self.find_check(&update.head_sha, &update.name, &update.external_id)
                    .await?
            }
        };
        let mut chunks = update.annotations.chunks(ANNOTATIONS_PER_CALL);
        let first = chunks.next().unwrap_or(&[]);
        let body = check_body(update, first);
        let id = match id {
            Some(id) => {
                self.call(
                    "PATCH",
                    &format!("{}/check-runs/{id}", self.base()),
                    Some(body),
                )
                .await?;
                id
            }
            None => {
                let created = self
                    .call("POST", &format!("{}/check-runs", self.base()), Some(body))
                    .await?;
                created["id"].as_u64().ok_or_else(|| ForgeError::Refused {
                    call: "POST check-runs".into(),
                    status: 200,
                    message: "the answer has no id".into(),
                })?
            }
        };
        for chunk in chunks {
            let body = json!({"output": {"title": update.title, "summary": update.summary, "annotations": chunk}});
            self.call(
                "PATCH",
                &format!("{}/check-runs/{id}", self.base()),
                Some(body),
            )
            .await?;
        }
        Ok(id)
    }

    /// The id of the run named `name` on `sha` whose external id is ours.
    pub async fn find_check(
        &self,
        sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<u64>, ForgeError> {
        let path = format!(
            "{}/commits/{sha}/check-runs?check_name={}&filter=all",
            self.base(),
            encode(name)
        );
        let list = self.call("GET", &path, None).await?;
        Ok(list["check_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["name"] == name && r["external_id"].as_str().is_none_or(|e| e == external_id)
            })
            .and_then(|r| r["id"].as_u64()))
    }

    /// Set the commit status `update.name` on `update.head_sha` to what `update` shows.
    /// Statuses have no id to update: the newest per name (context) is the one shown.
    pub async fn publish_status(&self, update: &CheckUpdate) -> Result<(), ForgeError> {
        let state = match update.state {
            CheckState::Queued | CheckState::InProgress => "pending",
            CheckState::Completed(Conclusion::Success) => "success",
            CheckState::Completed(Conclusion::Failure | Conclusion::TimedOut) => "failure",
            CheckState::Completed(Conclusion::ActionRequired | Conclusion::Cancelled) => "error",
        };
        // GitHub keeps 140 characters of description: the title, then the first annotation.
        let mut description = update.title.clone();
        if let Some(a) = update.annotations.first() {
            description.push_str(&format!(
                ": {}:{} {}",
                a.path,
                a.start_line,
                a.message.lines().next().unwrap_or_default()
            ));
        }
        let description: String = description.chars().take(140).collect();
        let mut body = json!({"state": state, "context": update.name, "description": description});
        if let Some(u) = &update.details_url {
            body["target_url"] = json!(u);
        }
        crate::secrets::mask_json(&mut body);
        self.call(
            "POST",
            &format!("{}/statuses/{}", self.base(), update.head_sha),
            Some(body),
        )
        .await
        .map(|_| ())
    }
}
