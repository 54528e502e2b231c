//! The forge client (octocrab) against the local GitHub-compatible forge.

use std::process::Command;
use std::time::Duration;

use codex_runner::forge::{
    Annotation, CheckState, CheckUpdate, Conclusion, ForgeError, ForgeRepo, GitHub,
};
use forge_sim::{Faults, ForgeSim, Token};

const TOKEN: &str = "ghp_runner";

/// A forge with acme/ops holding one commit on main; the commit's sha.
async fn forge(tmp: &std::path::Path) -> (ForgeSim, String) {
    let sim = ForgeSim::start(
        &tmp.join("forge"),
        0,
        vec![Token::full(TOKEN), Token::read_only("ghp_reader")],
    )
    .await
    .unwrap();
    sim.create_repo("acme", "ops").unwrap();
    let work = tmp.join("work");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(tmp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q", "-b", "main", work.to_str().unwrap()]);
    std::fs::write(work.join("README.md"), "ops\n").unwrap();
    let w = work.to_str().unwrap();
    git(&["-C", w, "add", "-A"]);
    git(&["-C", w, "commit", "-q", "-m", "seed"]);
    git(&[
        "-C",
        w,
        "push",
        "-q",
        &sim.git_url("acme", "ops", Some(TOKEN)),
        "main",
    ]);
    let sha = git(&["-C", w, "rev-parse", "HEAD"]);
    (sim, sha)
}

fn client(sim: &ForgeSim, token: &str) -> GitHub {
    let repo = ForgeRepo {
        api_url: sim.url(),
        owner: "acme".into(),
        name: "ops".into(),
    };
    GitHub::with_token(repo, token)
        .unwrap()
        .with_retries(6, Duration::from_millis(50))
}

fn update(sha: &str, state: CheckState, annotations: usize) -> CheckUpdate {
    CheckUpdate {
        name: "codex-runner/deploy-1".into(),
        head_sha: sha.into(),
        external_id: "deploy-1".into(),
        state,
        started_at: None,
        title: "deploy-1".into(),
        summary: "summary".into(),
        text: Some("last lines".into()),
        details_url: Some("http://127.0.0.1/log".into()),
        annotations: (0..annotations)
            .map(|i| Annotation {
                path: "requests/deploy-1.yaml".into(),
                start_line: i + 1,
                end_line: i + 1,
                annotation_level: "failure".into(),
                message: format!("problem {i}"),
                title: None,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_run_goes_queued_in_progress_completed_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, sha) = forge(tmp.path()).await;
    let gh = client(&sim, TOKEN);
    // What the pull request shows, read the way a person's browser or a bot reads it.
    let look = forge_sim::Client::new(&sim.url(), "acme", "ops", TOKEN);
    let id = gh
        .publish_check(&update(&sha, CheckState::Queued, 0), None)
        .await
        .unwrap();
    assert_eq!(
        look.check_status(id).await.unwrap(),
        ("queued".to_string(), None)
    );
    // Without the id (a restarted runner), the run is found, not created again.
    let again = gh
        .publish_check(&update(&sha, CheckState::InProgress, 0), None)
        .await
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(look.check_status(id).await.unwrap().0, "in_progress");
    // 120 annotations go out 50 per call.
    let done = gh
        .publish_check(
            &update(&sha, CheckState::Completed(Conclusion::ActionRequired), 120),
            Some(id),
        )
        .await
        .unwrap();
    assert_eq!(done, id);
    assert_eq!(
        look.check_status(id).await.unwrap(),
        ("completed".to_string(), Some("action_required".to_string()))
    );
    let raw: serde_json::Value = api_get(&sim, &format!("/repos/acme/ops/check-runs/{id}")).await;
    assert_eq!(raw["output"]["annotations_count"], 120);
    assert_eq!(raw["external_id"], "deploy-1");
    let list: serde_json::Value =
        api_get(&sim, &format!("/repos/acme/ops/commits/{sha}/check-runs")).await;
    assert_eq!(list["total_count"], 1, "no duplicate check run: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_5xx_and_429_still_ends_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, sha) = forge(tmp.path()).await;
    sim.set_faults(Faults {
        every: 2,
        answers: vec![500, 502, 429],
    });
    let gh = client(&sim, TOKEN);
    // What the pull request shows, read the way a person's browser or a bot reads it.
    let look = forge_sim::Client::new(&sim.url(), "acme", "ops", TOKEN);
    let id = gh
        .publish_check(&update(&sha, CheckState::Queued, 0), None)
        .await
        .unwrap();
    gh.publish_check(&update(&sha, CheckState::InProgress, 0), None)
        .await
        .unwrap();
    gh.publish_check(
        &update(&sha, CheckState::Completed(Conclusion::Success), 0),
        Some(id),
    )
    .await
    .unwrap();
    let (calls, faulted) = sim.api_stats();
    assert!(
        faulted >= 3,
        "the storm happened: {calls} calls, {faulted} faulted"
    );
    sim.set_faults(Faults::default());
    assert_eq!(
        look.check_status(id).await.unwrap(),
        ("completed".to_string(), Some("success".to_string()))
    );
    let list: serde_json::Value =
        api_get(&sim, &format!("/repos/acme/ops/commits/{sha}/check-runs")).await;
    assert_eq!(list["total_count"], 1, "no duplicate check run: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_not_retried_and_outages_give_up_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, sha) = forge(tmp.path()).await;
    let reader = client(&sim, "ghp_reader");
    match reader
        .publish_check(&update(&sha, CheckState::Queued, 0), None)
        .await
    {
        Err(ForgeError::Refused { status: 403, .. }) => {}
        other => panic!("a read-only token must be refused at once: {other:?}"),
    }
    let before = sim.api_stats().0;
    sim.set_faults(Faults {
        every: 1,
        answers: vec![502],
    });
    let gh = client(&sim, TOKEN).with_retries(3, Duration::from_millis(10));
    match gh
        .publish_check(&update(&sha, CheckState::Queued, 0), None)
        .await
    {
        Err(ForgeError::Unavailable { detail, .. }) => assert!(detail.contains("502"), "{detail}"),
        other => panic!("expected the forge to be unavailable: {other:?}"),
    }
    assert_eq!(
        sim.api_stats().0 - before,
        3,
        "exactly the configured attempts"
    );
}

async fn api_get(sim: &ForgeSim, path: &str) -> serde_json::Value {
    crate::common::forge_get(&sim.url(), TOKEN, path)
}
