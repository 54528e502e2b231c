//! The Kubernetes executor against a real cluster: the single-node Kubernetes 1.20 that
//! `scripts/k8s/up.sh` starts on loopback (`.ci/run` builds and starts it). Each test has a
//! namespace of its own. The same requests as the Docker executor's tests, with the same
//! outcomes; then what only a cluster has: Secrets and ConfigMaps owned by the Job, a runner
//! killed while its Job runs, Jobs a dead runner left.

use crate::common::{docker, ms, Repo};
use crate::dispatch::{
    add_stubborn_handlers, append_index, assert_lines, assert_stopped_at_their_timeout,
    isolation_probe_in, sh_chmod, HARDENED,
};
use crate::shutdown::{finish, signal, spawn_pass};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// A namespace of the local cluster, deleted when dropped.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub namespace: String,
}

impl Cluster {
    /// Fail unless the cluster answers; make a fresh namespace for `test`.
    pub fn new(test: &str) -> Cluster {
        docker();
        let kubeconfig = std::env::var_os("CODEX_RUNNER_KUBECONFIG").map_or_else(
            || PathBuf::from("/var/lib/k8s-local/admin.kubeconfig"),
            PathBuf::from,
        );
        assert!(
            kubeconfig.exists(),
            "these tests need the local Kubernetes cluster: run `bash scripts/k8s/build.sh` once, then `bash scripts/k8s/up.sh` (no {})",
            kubeconfig.display()
        );
        let cluster = Cluster {
            kubeconfig,
            namespace: format!("codex-it-{test}-{}", std::process::id()),
        };
        let ready = cluster.try_kubectl(&["get", "--raw", "/readyz"]);
        assert!(
            ready.as_ref().is_ok_and(|s| s.trim() == "ok"),
            "the Kubernetes API server does not answer (`bash scripts/k8s/up.sh` starts it): {ready:?}"
        );
        cluster.kubectl(&["create", "namespace", &cluster.namespace]);
        // Pods are refused until the namespace's default service account exists.
        let until = Instant::now() + Duration::from_secs(60);
        while cluster
            .try_kubectl(&["-n", &cluster.namespace, "get", "serviceaccount", "default"])
            .is_err()
        {
            assert!(Instant::now() < until, "no default service account");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// kubectl in this test's namespace; its output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        self.try_kubectl(&all)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }

    /// A host config running handlers in this namespace, with `extra` TOML before it.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "{extra}\n[executor]\nkind = \"kubernetes\"\n\n[executor.kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"{}\"\nimage_pull_policy = \"Never\"\nstart_timeout = \"60s\"\n",
            self.kubeconfig.display(),
            self.namespace
        )
    }

    /// Names of the runner's objects of `kind` (jobs, configmaps, secrets) in the namespace.
    pub fn ours(&self, kind: &str) -> Vec<String> {
        self.kubectl(&[
            "get",
            kind,
            "-l",
            "codex-runner.io/managed=true",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    /// Wait until no Job, ConfigMap or Secret of ours is left (deletion is asynchronous).
    pub fn assert_nothing_left(&self) {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let left: Vec<String> = ["jobs", "configmaps", "secrets", "pods"]
                .iter()
                .flat_map(|k| self.ours(k))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < until, "left in the cluster: {left:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The JSON of the runner's Job for request `id`, once there is one.
    pub fn wait_for_job(&self, id: &str) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.kubectl(&[
                "get",
                "jobs",
                "-l",
                &format!("codex-runner.io/request={id}"),
                "-o",
                "json",
            ]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if let Some(job) = v["items"].as_array().and_then(|a| a.first()) {
                return job.clone();
            }
            assert!(Instant::now() < until, "no Job for {id}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the pod of the Job for `id` has its handler running.
    pub fn running(&self, id: &str) -> bool {
        !self
            .kubectl(&[
                "get",
                "pods",
                "-l",
                &format!("codex-runner.io/request={id}"),
                "-o",
                "jsonpath={.items[*].status.containerStatuses[*].state.running.startedAt}",
            ])
            .trim()
            .is_empty()
    }

    fn write_config(&self, repo: &Repo, extra: &str) -> String {
        let path = repo.tmp.path().join("kube.toml");
        std::fs::write(&path, self.config(extra)).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("CODEX_TEST_KEEP_NAMESPACE").is_some() {
            return;
        }
        let _ = self.try_kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

fn wait_until_running(cluster: &Cluster, id: &str, child: &mut std::process::Child) {
    let until = Instant::now() + Duration::from_secs(90);
    while !cluster.running(id) {
        assert!(Instant::now() < until, "the pod of {id} never ran");
        assert!(child.try_wait().unwrap().is_none(), "the pass ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn on_kubernetes_requests_end_as_they_do_on_docker() {
    let cluster = Cluster::new("outcomes");
    let mut repo = Repo::new("t-k8s-outcomes");
    add_stubborn_handlers(&repo);
    repo.write(
        "handlers/paced.sh",
        b"#!/bin/sh\necho one\nsleep 2\necho two\nsleep 2\necho three\n",
    );
    sh_chmod(&repo, "handlers/paced.sh");
    // A line longer than the 16 KiB pieces the container log keeps it in.
    repo.write(
        "handlers/long.sh",
        b"#!/bin/sh\nhead -c 40000 /dev/zero | tr '\\0' a\necho\necho next\n",
    );
    sh_chmod(&repo, "handlers/long.sh");
    append_index(
        &repo,
        "  absent:\n    run: handlers/echo.sh\n    image: codex-runner/absent:1\n  paced:\n    run: handlers/paced.sh\n    image: codex-runner/busybox:1\n  long:\n    run: handlers/long.sh\n    image: codex-runner/busybox:1\n",
    );
    repo.merge_pr(&[
        (
            "requests/ok.yaml",
            b"kind: echo\nparams: {message: hello from a pod}\n",
        ),
        (
            "requests/boom.yaml",
            b"kind: echo\nparams: {message: about to fail, exit: 3}\n",
        ),
        (
            "requests/slow.yaml",
            b"kind: echo\ntimeout: 2s\nparams: {message: sleepy, sleep: 60}\n",
        ),
        ("requests/hog.yaml", b"kind: hog\n"),
        ("requests/polite.yaml", b"kind: term\ntimeout: 2s\n"),
        ("requests/mute.yaml", b"kind: mute\ntimeout: 2s\n"),
        ("requests/paced.yaml", b"kind: paced\n"),
        ("requests/long.yaml", b"kind: long\n"),
        (
            "requests/absent.yaml",
            b"kind: absent\nparams: {message: x}\n",
        ),
        (
            "requests/built.yaml",
            b"kind: deploy\nparams: {service: web, version: v1, environment: staging}\n",
        ),
    ]);
    let config = cluster.write_config(&repo, "[limits]\ngrace = \"2s\"\n");
    let pass = repo.dispatch(&["--config", &config]).ok();
    let states = pass.states();

    assert_eq!(states["ok"], "succeeded", "{}", pass.stderr);
    assert!(
        repo.output("ok")
            .contains(&"message: hello from a pod".to_string()),
        "{:?}",
        repo.output("ok")
    );
    assert_eq!(states["boom"], "failed");
    let st = repo.status("boom");
    assert_eq!(
        (st["exit_code"].as_i64(), st["reason"].as_str()),
        (Some(3), Some("exit code 3"))
    );
    assert!(repo
        .output("boom")
        .contains(&"failing on purpose with exit code 3".to_string()));

    // The Job is deleted; its pod gets SIGTERM, the grace period, SIGKILL.
    assert_stopped_at_their_timeout(&repo, &states);

    // Streamed from the pod's log as written: lines 2 s apart in the pod are 2 s apart in the
    // run log (the first may wait for the log stream to open).
    let log = repo.log("paced");
    let at = |line: &str| {
        let e = log
            .iter()
            .find(|e| e["event"] == "output" && e["line"] == line)
            .unwrap_or_else(|| panic!("{line}: {log:#?}"));
        ms(e["ts"].as_str().unwrap())
    };
    let gap = at("three") - at("two");
    assert!(gap >= 1800, "output was collected, not streamed: {gap}ms");
    assert!(at("two") > at("one"), "{log:#?}");

    assert_eq!(
        repo.output("long"),
        ["a".repeat(40_000), "next".to_string()],
        "one line, whole, without the log's own stamps"
    );

    assert_eq!(states["hog"], "failed");
    let st = repo.status("hog");
    assert_eq!(st["reason"], "oom", "{st}");

    // What the cluster cannot run fails with the reason, in the operator's words.
    assert_eq!(states["absent"], "rejected", "{}", pass.stderr);
    let reason = repo.status("absent")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("codex-runner/absent:1") && reason.contains("ErrImageNeverPull"),
        "{reason}"
    );
    let reason = repo.status("built")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("does not build images"), "{reason}");
    repo.assert_no_containers();
    cluster.assert_nothing_left();
}

#[test]
fn on_kubernetes_the_pod_is_hardened_like_the_container() {
    let cluster = Cluster::new("iso");
    let out = isolation_probe_in("t-k8s-iso", None, Some(&cluster.config("")));
    assert_lines(&out, HARDENED);
    assert_lines(
        &out,
        &[
            "CapEff=0000000000000000 CapBnd=0000000000000000 NoNewPrivs=1",
            "cpu=100000 100000",
        ],
    );
    // The pause container is PID 1 (shareProcessNamespace), as docker-init is under Docker;
    // the pod's process limit is the node's (kubelet podPidsLimit), not the handler's.
    assert!(
        out.iter()
            .any(|l| l.starts_with("memory=536870912 ") && l.ends_with("pid1=pause")),
        "{out:#?}"
    );
    cluster.assert_nothing_left();
}

const SECRET: &str = "tok-k8s-5e1f0c9a7d";
const FILE_SECRET: &str = "file-secret-9b2c4d";

fn sha256(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn secrets_reach_the_pod_through_a_secret_the_job_owns_and_never_its_spec() {
    let cluster = Cluster::new("secrets");
    let mut repo = Repo::new("t-k8s-secrets");
    repo.add_handler(
        "peek",
        "#!/bin/sh\necho \"token: $TOKEN\"\necho \"sha token $(printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1)\"\necho \"sha key $(printf %s \"$(cat \"$CODEX_SECRETS/KEY\")\" | sha256sum | cut -d' ' -f1)\"\necho \"key: $(cat \"$CODEX_SECRETS/KEY\")\"\nsleep 4\n",
        "    image: codex-runner/busybox:1\n    secrets:\n      TOKEN: env\n      KEY: file\n",
    );
    repo.merge_pr(&[("requests/peek.yaml", b"kind: peek\n")]);
    let config = cluster.write_config(
        &repo,
        &format!("[secrets]\nTOKEN = {{ value = \"{SECRET}\" }}\nKEY = {{ value = \"{FILE_SECRET}\" }}\n"),
    );
    // Every version of the run's Secret, as the API server hands them out.
    let mut secrets = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args([
            "-n",
            &cluster.namespace,
            "get",
            "secrets",
            "-l",
            "codex-runner.io/managed=true",
        ])
        .args(["--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let child = spawn_pass(&repo, &["--config", &config]);
    let job = cluster.wait_for_job("peek");
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let text = job.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(FILE_SECRET),
        "{text}"
    );
    let pass = finish(child).0.ok();
    assert_eq!(pass.states()["peek"], "succeeded", "{}", pass.stderr);
    let out = repo.output("peek");
    assert_lines(
        &out,
        &[
            &format!("sha token {}", sha256(SECRET)),
            &format!("sha key {}", sha256(FILE_SECRET)),
        ],
    );
    let log = repo.main_file(&crate::common::log_path("peek")).unwrap();
    assert!(!log.contains(SECRET) && !log.contains(FILE_SECRET), "{log}");
    cluster.assert_nothing_left();
    // The Secret was the Job's (it goes with the Job), and was deleted once the pod ran.
    let _ = secrets.kill();
    let out = secrets.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect();
    let uid = job["metadata"]["uid"].as_str().unwrap();
    let meta = |e: &serde_json::Value| e["object"]["metadata"].clone();
    assert!(
        events
            .iter()
            .any(|e| meta(e)["ownerReferences"][0]["uid"] == uid
                && meta(e)["ownerReferences"][0]["kind"] == "Job"
                && meta(e)["labels"]["codex-runner.io/job"] == name.as_str()),
        "never owned by Job {name}: {events:#?}"
    );
    assert!(events.iter().any(|e| e["type"] == "DELETED"), "{events:#?}");
}

#[test]
fn a_runner_killed_before_during_or_after_its_job_goes_on_from_there_exactly_once() {
    let cluster = Cluster::new("killed");
    // Before the Job exists; while its pod runs; after the handler exited, its outcome not yet
    // recorded. Each time the next pass must end the request once, as attempt 1, with every
    // line once and in order (each point has a runner, a repository and a request of its own).
    for point in ["before-start", "running", "after-exit"] {
        let mut repo = Repo::new(&format!("t-k8s-killed-{point}"));
        repo.add_handler(
            "count",
            "#!/bin/sh\nfor i in 1 2 3 4 5 6; do echo \"line $i\"; sleep 0.5; done\n",
            "    image: codex-runner/busybox:1\n",
        );
        repo.merge_pr(&[("requests/count.yaml", b"kind: count\n")]);
        let config = cluster.write_config(&repo, "");
        let crashed =
            repo.dispatch_env(&["--config", &config], &[("CODEX_RUNNER_CRASH_AT", point)]);
        assert_ne!(crashed.code, 0, "{point}: {}", crashed.stderr);
        let pass = repo.dispatch(&["--config", &config]).ok();
        assert_eq!(
            pass.states()["count"],
            "succeeded",
            "{point}: {}",
            pass.stderr
        );
        let st = repo.status("count");
        assert_eq!(
            st["attempt"], 1,
            "{point}: followed or started, not run again: {st}"
        );
        let out = repo.output("count");
        let want: Vec<String> = (1..=6).map(|i| format!("line {i}")).collect();
        assert_eq!(out, want, "{point}: every line once, in order");
    }
    cluster.assert_nothing_left();
}

#[test]
fn jobs_and_files_a_dead_runner_left_are_deleted_at_the_next_pass() {
    let cluster = Cluster::new("leftovers");
    let mut repo = Repo::new("t-k8s-left");
    repo.merge_pr(&[(
        "requests/long.yaml",
        b"kind: echo\nparams: {message: long, sleep: 300}\n",
    )]);
    let config = cluster.write_config(&repo, "[limits]\ngrace = \"1s\"\n");
    let crashed = repo.dispatch_env(
        &["--config", &config],
        &[("CODEX_RUNNER_CRASH_AT", "running")],
    );
    assert_ne!(crashed.code, 0, "{}", crashed.stderr);
    assert_eq!(cluster.ours("jobs").len(), 1);
    // A ConfigMap of a Job that was never made (its runner died in between).
    let stray = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray-files-0\n  labels:\n    codex-runner.io/managed: \"true\"\n    codex-runner.io/runner: t-k8s-left\n    codex-runner.io/job: stray\n  annotations:\n    codex-runner.io/owner: {}/999999\n",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim()
    );
    let file = repo.tmp.path().join("stray.yaml");
    std::fs::write(&file, stray).unwrap();
    cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    // The same runner with its state lost: nothing to follow, everything of it to delete.
    let other = Repo::new("t-k8s-left");
    let config2 = cluster.write_config(&other, "[limits]\ngrace = \"1s\"\n");
    let pass = other.dispatch(&["--config", &config2]).ok();
    assert!(
        pass.stderr.contains("Job left by a dead runner"),
        "{}",
        pass.stderr
    );
    cluster.assert_nothing_left();
}

#[test]
fn after_the_drain_timeout_the_job_is_deleted_and_the_request_recorded_cancelled() {
    let cluster = Cluster::new("cancel");
    let mut repo = Repo::new("t-k8s-cancel");
    repo.merge_pr(&[(
        "requests/long.yaml",
        b"kind: echo\nparams: {message: long, sleep: 120}\n",
    )]);
    let config = cluster.write_config(&repo, "[limits]\ngrace = \"1s\"\n");
    let mut child = spawn_pass(&repo, &["--config", &config, "--drain-timeout", "1s"]);
    wait_until_running(&cluster, "long", &mut child);
    signal(&child, libc::SIGTERM);
    let (pass, took) = finish(child);
    let pass = pass.ok();
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(pass.states()["long"], "cancelled", "{}", pass.stderr);
    let status = repo.status("long");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("runner was stopping"),
        "{status}"
    );
    cluster.assert_nothing_left();
}

impl Cluster {
    /// A kubeconfig that is service account `sa` of this namespace (its token).
    fn kubeconfig_of(&self, sa: &str, dir: &std::path::Path) -> PathBuf {
        let until = Instant::now() + Duration::from_secs(60);
        let secret = loop {
            let name = self.kubectl(&[
                "get",
                "serviceaccount",
                sa,
                "-o",
                "jsonpath={.secrets[0].name}",
            ]);
            if !name.trim().is_empty() {
                break name.trim().to_string();
            }
            assert!(Instant::now() < until, "no token for {sa}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let token = self.kubectl(&["get", "secret", &secret, "-o", "jsonpath={.data.token}"]);
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .unwrap();
        let raw = |path: &str| {
            self.try_kubectl(&["config", "view", "--raw", "-o", &format!("jsonpath={path}")])
                .unwrap()
        };
        let server = raw("{.clusters[0].cluster.server}");
        let mut ca = raw("{.clusters[0].cluster.certificate-authority-data}");
        if ca.trim().is_empty() {
            let file = raw("{.clusters[0].cluster.certificate-authority}");
            ca = base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(file.trim()).unwrap());
        }
        let path = dir.join(format!("{sa}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: {sa}\n  context: {{cluster: local, user: {sa}, namespace: {}}}\ncurrent-context: {sa}\n",
                String::from_utf8(token).unwrap(),
                self.namespace
            ),
        )
        .unwrap();
        path
    }
}

/// The `kubernetes` line of `verify --format json` for the host config at `config`.
fn verify_line(config: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .args(["verify", "--format", "json", "--config", config])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kubernetes")
        .cloned()
        .unwrap_or_else(|| panic!("no kubernetes check: {report}"))
}

#[test]
fn the_documented_role_is_all_the_runner_needs_and_verify_names_what_is_missing() {
    let cluster = Cluster::new("rbac");
    let mut repo = Repo::new("t-k8s-rbac");
    let rbac = std::fs::read_to_string(crate::common::root().join("docs/kubernetes/rbac.yaml"))
        .unwrap()
        .replace(
            "namespace: codex-runner",
            &format!("namespace: {}", cluster.namespace),
        );
    let file = repo.tmp.path().join("rbac.yaml");
    std::fs::write(&file, &rbac).unwrap();
    cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    // The same Role without secrets, for a runner that cannot do all it needs.
    let weak = rbac
        .replace("name: codex-runner\n", "name: weak\n")
        .replace("\"configmaps\", \"secrets\"", "\"configmaps\"");
    std::fs::write(&file, &weak).unwrap();
    cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    // The documented Deployment is what the API server accepts (validated, not run: pods
    // here have no network to reach a forge).
    let deployment =
        std::fs::read_to_string(crate::common::root().join("docs/kubernetes/deployment.yaml"))
            .unwrap()
            .replace(
                "namespace: codex-runner",
                &format!("namespace: {}", cluster.namespace),
            );
    let manifest = repo.tmp.path().join("deployment.yaml");
    std::fs::write(&manifest, deployment).unwrap();
    let accepted = cluster.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        manifest.to_str().unwrap(),
    ]);
    for kind in [
        "configmap",
        "secret",
        "persistentvolumeclaim",
        "deployment.apps",
        "service",
    ] {
        assert!(
            accepted.contains(&format!("{kind}/codex-runner"))
                || accepted.contains(&format!("{kind}/codex-runner-state")),
            "{kind}: {accepted}"
        );
    }
    let runner = cluster.kubeconfig_of("codex-runner", repo.tmp.path());
    let weakling = cluster.kubeconfig_of("weak", repo.tmp.path());
    let config_with = |kubeconfig: &PathBuf, name: &str| {
        let text = cluster
            .config(&format!(
                "[runner]\nname = \"{}\"\nstate_dir = \"{}\"\n[repository]\nurl = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\n[secrets]\nTOKEN = {{ value = \"{SECRET}\" }}\n",
                repo.runner,
                repo.state.display(),
                repo.origin.display()
            ))
            .replace(
                &format!("kubeconfig = \"{}\"", cluster.kubeconfig.display()),
                &format!("kubeconfig = \"{}\"", kubeconfig.display()),
            );
        let path = repo.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let good = config_with(&runner, "good.toml");
    let bad = config_with(&weakling, "weak.toml");

    // verify: the documented Role lacks nothing; the weak one lacks the secrets. (The
    // template's `deploy` handler builds its image, which a cluster cannot: said too.)
    let line = verify_line(&good);
    let detail = line["detail"].as_str().unwrap();
    assert!(!detail.contains("may not"), "{line}");
    assert!(
        detail.contains("deploy") && detail.contains("v1.20"),
        "{line}"
    );
    let line = verify_line(&bad);
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains("may not: create secrets, list secrets, patch secrets, delete secrets, deletecollection secrets"),
        "{line}"
    );

    // selftest checks the cluster instead of Docker (a runner in a pod has no Docker).
    let selftest = |config: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_codex-runner"))
            .args(["selftest", "--config", config])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = selftest(&good);
    assert!(
        out.lines().any(|l| l.starts_with("ok   kubernetes: v1.20")) && !out.contains("docker"),
        "{out}"
    );
    let out = selftest(&bad);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL kubernetes:") && l.contains("may not: create secrets")),
        "{out}"
    );

    // Requests run end to end with nothing but the documented Role, a refused one included
    // (its Job is deleted with its files at once).
    repo.add_handler(
        "peek",
        "#!/bin/sh\necho \"token is ${#TOKEN} long\"\n",
        "    image: codex-runner/busybox:1\n    secrets:\n      TOKEN: env\n",
    );
    append_index(
        &repo,
        "  absent:\n    run: handlers/echo.sh\n    image: codex-runner/absent:1\n",
    );
    repo.merge_pr(&[
        (
            "requests/ok.yaml",
            b"kind: echo\nparams: {message: least privilege}\n",
        ),
        ("requests/peek.yaml", b"kind: peek\n"),
        (
            "requests/absent.yaml",
            b"kind: absent\nparams: {message: x}\n",
        ),
    ]);
    let pass = repo.dispatch(&["--config", &good]).ok();
    let states = pass.states();
    assert_eq!(states["ok"], "succeeded", "{}", pass.stderr);
    assert_eq!(states["peek"], "succeeded", "{}", pass.stderr);
    assert_eq!(states["absent"], "rejected", "{}", pass.stderr);
    assert!(
        repo.output("peek")
            .contains(&format!("token is {} long", SECRET.len())),
        "{:?}",
        repo.output("peek")
    );
    assert!(!pass.stderr.contains("forbidden"), "{}", pass.stderr);
    cluster.assert_nothing_left();
}

#[test]
fn a_pod_deleted_under_a_running_handler_fails_its_request_and_is_not_started_again() {
    let cluster = Cluster::new("evicted");
    let mut repo = Repo::new("t-k8s-evicted");
    repo.add_handler(
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\necho started\nsleep 20\necho finished\n",
        "    image: codex-runner/busybox:1\n",
    );
    repo.merge_pr(&[("requests/gone.yaml", b"kind: stubborn\n")]);
    let config = cluster.write_config(&repo, "[limits]\ngrace = \"5s\"\n");
    let mut child = spawn_pass(&repo, &["--config", &config]);
    wait_until_running(&cluster, "gone", &mut child);
    // Not in the very moment it starts: then the runner has not yet seen it run and taken
    // back its files (see docs/kubernetes/README.md).
    std::thread::sleep(Duration::from_secs(1));
    let job = cluster.wait_for_job("gone")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // As a node drain would: the pod goes, with its grace period.
    cluster.kubectl(&[
        "delete",
        "pod",
        "-l",
        &format!("job-name={job}"),
        "--wait=false",
    ]);
    let pass = finish(child).0.ok();
    assert_eq!(pass.states()["gone"], "failed", "{}", pass.stderr);
    let reason = repo.status("gone")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("deleted by someone else"), "{reason}");
    assert_eq!(repo.output("gone"), ["started"]);
    // The Job controller made a pod in place of the deleted one; it never ran the handler.
    let started = cluster
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=Started",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name} {end}",
        ])
        .split_whitespace()
        .filter(|p| p.starts_with(&job))
        .count();
    assert_eq!(started, 1, "the handler started again");
    cluster.assert_nothing_left();
}

#[test]
fn a_pod_no_node_takes_fails_its_request_at_the_start_timeout_with_the_schedulers_word() {
    let cluster = Cluster::new("unschedulable");
    let mut repo = Repo::new("t-k8s-unschedulable");
    repo.merge_pr(&[(
        "requests/nowhere.yaml",
        b"kind: echo\nparams: {message: never}\n",
    )]);
    // No node carries this label: the pod stays Pending, unscheduled.
    let config = cluster.write_config(&repo, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "start_timeout = \"60s\"",
        "start_timeout = \"3s\"\nnode_selector = { \"codex-runner.io/test\" = \"nowhere\" }",
    );
    std::fs::write(&config, text).unwrap();
    let t = Instant::now();
    let pass = repo.dispatch(&["--config", &config]).ok();
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert_eq!(pass.states()["nowhere"], "rejected", "{}", pass.stderr);
    let reason = repo.status("nowhere")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("did not start within 3s")
            && reason.contains("start_timeout")
            && reason.contains("not scheduled: 0/1 nodes are available"),
        "{reason}"
    );
    cluster.assert_nothing_left();
}
