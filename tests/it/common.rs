//! Shared fixtures for integration tests: a real bare remote, a working clone made with the
//! git CLI, the real `codex-runner` binary, and the real Docker engine.
//!
//! Tests that need Docker call [`docker`]; it panics when the engine does not answer, so a
//! missing engine fails the test instead of skipping it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The repository root (the template lives there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command, panic with its output on failure.
pub fn sh(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail unless the Docker engine answers; build the example images once per test process.
pub fn docker() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let ping = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output();
        match ping {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "these tests need a running Docker engine: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("these tests need the docker CLI and engine: {e}"),
        }
        sh(&root(), "bash", &["containers/build-images.sh"]);
    });
}

/// Names of containers (any state) of a runner.
pub fn containers_of(runner: &str) -> Vec<String> {
    let filter = format!("label=io.codex-runner.runner={runner}");
    sh(
        &root(),
        "docker",
        &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// A bare remote and a working clone seeded with the template.
pub struct Repo {
    pub tmp: tempfile::TempDir,
    pub origin: PathBuf,
    pub work: PathBuf,
    pub runner: String,
    /// The runner's state dir (tests may point two runners at one).
    pub state: PathBuf,
    merges: usize,
}

const TEMPLATE: &[&str] = &[
    "codex.repo.yaml",
    "README.codex.md",
    "handlers",
    "containers",
    "requests/.gitkeep",
    "processed/.gitkeep",
    "logs/.gitkeep",
];

impl Repo {
    /// A new remote whose main holds the template; `runner` names this test's runner.
    pub fn new(runner: &str) -> Repo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        sh(
            tmp.path(),
            "git",
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                origin.to_str().unwrap(),
            ],
        );
        sh(
            tmp.path(),
            "git",
            &["init", "-q", "-b", "main", work.to_str().unwrap()],
        );
        for item in TEMPLATE {
            let dest = work.join(item);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            sh(
                tmp.path(),
                "cp",
                &[
                    "-a",
                    root().join(item).to_str().unwrap(),
                    dest.to_str().unwrap(),
                ],
            );
        }
        let state = tmp.path().join("state");
        let repo = Repo {
            tmp,
            origin,
            work,
            runner: runner.to_string(),
            state,
            merges: 0,
        };
        repo.git(&["config", "user.name", "Test Agent"]);
        repo.git(&["config", "user.email", "agent@example.invalid"]);
        repo.git(&["remote", "add", "origin", repo.origin.to_str().unwrap()]);
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "template"]);
        repo.git(&["push", "-q", "origin", "main"]);
        repo
    }

    /// Run git in the working clone.
    pub fn git(&self, args: &[&str]) -> String {
        sh(&self.work, "git", args)
    }

    /// Write a file in the working clone (not committed).
    pub fn write(&self, path: &str, bytes: &[u8]) {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// Fast-forward the working clone to the remote's main, keeping uncommitted edits
    /// (test handlers written before a PR is merged).
    pub fn sync(&self) {
        self.git(&["fetch", "-q", "origin"]);
        self.git(&["checkout", "-q", "main"]);
        self.git(&["merge", "-q", "--ff-only", "origin/main"]);
    }

    /// Commit `files` on a branch and merge it into main with a merge commit, as a PR merge.
    /// Edits already in the working clone (handlers a test added) land on main first, in a
    /// commit of their own: a request merged together with handler code is rejected.
    pub fn merge_pr(&mut self, files: &[(&str, &[u8])]) -> String {
        self.merge_pr_with(files, |_| {})
    }

    /// [`Repo::merge_pr`], with `prepare` run on the branch after the files are staged and
    /// before the commit (for what plain files cannot express: links, gitlinks).
    pub fn merge_pr_with(
        &mut self,
        files: &[(&str, &[u8])],
        prepare: impl FnOnce(&Repo),
    ) -> String {
        self.sync();
        if !self.git(&["status", "--porcelain"]).trim().is_empty() {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "-m", "test set-up: handlers"]);
            self.git(&["push", "-q", "origin", "main"]);
        }
        self.merges += 1;
        let branch = format!("pr-{}", self.merges);
        self.git(&["checkout", "-q", "-b", &branch]);
        for (path, bytes) in files {
            self.write(path, bytes);
        }
        self.git(&["add", "-A"]);
        prepare(self);
        self.git(&["commit", "-q", "-m", &format!("add requests ({branch})")]);
        self.git(&["checkout", "-q", "main"]);
        self.git(&[
            "merge",
            "-q",
            "--no-ff",
            &branch,
            "-m",
            &format!("Merge pull request #{} from {branch}", self.merges),
        ]);
        self.git(&["push", "-q", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Commit and push straight to main.
    pub fn push_main(&self, files: &[(&str, &[u8])], message: &str) -> String {
        self.sync();
        for (path, bytes) in files {
            self.write(path, bytes);
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["push", "-q", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// A daemon's host config for this test's runner on the bare remote (both listeners on
    /// ports the system picks, polling every `poll`), written as `name` in the test's dir.
    pub fn daemon_config(&self, name: &str, poll: &str) -> PathBuf {
        let config = self.tmp.path().join(name);
        std::fs::write(
            &config,
            format!(
                "[runner]\nname = \"{}\"\nstate_dir = \"{}\"\n\n[repository]\nurl = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\npoll_interval = \"{poll}\"\n",
                self.runner,
                self.state.display(),
                self.origin.display()
            ),
        )
        .unwrap();
        config
    }

    /// `codex-runner dispatch --once --json` for this test's runner against `remote`.
    pub fn dispatch_command(&self, remote: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codex-runner"));
        cmd.args(["dispatch", "--once", "--json", "--repo", remote])
            .args([
                "--state-dir",
                self.state.to_str().unwrap(),
                "--runner-name",
                &self.runner,
            ])
            .args(extra)
            .env("CODEX_LOG", "info");
        cmd
    }

    /// Run a pass against the bare remote with extra args.
    pub fn dispatch(&self, extra: &[&str]) -> Pass {
        self.dispatch_env(extra, &[])
    }

    /// A pass with extra environment variables.
    pub fn dispatch_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Pass {
        let mut cmd = self.dispatch_command(self.origin.to_str().unwrap(), extra);
        Pass::from(
            cmd.envs(env.iter().copied())
                .output()
                .expect("run codex-runner"),
        )
    }

    /// A pass against another URL of the same remote (e.g. git:// through a daemon).
    pub fn dispatch_url(&self, url: &str, extra: &[&str]) -> Pass {
        Pass::from(
            self.dispatch_command(url, extra)
                .output()
                .expect("run codex-runner"),
        )
    }

    /// A file at the tip of the remote's main.
    pub fn main_file(&self, path: &str) -> Option<String> {
        let out = Command::new("git")
            .args([
                "--git-dir",
                self.origin.to_str().unwrap(),
                "show",
                &format!("main:{path}"),
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The status file of `id` on main.
    pub fn status(&self, id: &str) -> Value {
        let text = self
            .main_file(&status_path(id))
            .unwrap_or_else(|| panic!("no status for {id} on main"));
        serde_json::from_str(&text).unwrap()
    }

    /// The JSONL log of `id` on main, one value per line.
    pub fn log(&self, id: &str) -> Vec<Value> {
        let text = self
            .main_file(&log_path(id))
            .unwrap_or_else(|| panic!("no log for {id} on main"));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}")))
            .collect()
    }

    /// Output lines (stdout and stderr) of `id`'s log.
    pub fn output(&self, id: &str) -> Vec<String> {
        self.log(id)
            .iter()
            .filter(|e| e["event"] == "output")
            .map(|e| e["line"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Number of commits on the remote's main.
    pub fn main_commits(&self) -> usize {
        sh(&self.origin, "git", &["rev-list", "--count", "main"])
            .trim()
            .parse()
            .unwrap()
    }

    /// Assert no container of this runner exists.
    pub fn assert_no_containers(&self) {
        let left = containers_of(&self.runner);
        assert!(left.is_empty(), "containers left behind: {left:?}");
    }
}

/// Run the binary.
pub fn codex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .args(args)
        .env("CODEX_LOG", "info")
        .output()
        .expect("run codex-runner")
}

/// Owned (path, bytes) pairs as [`Repo::merge_pr`] takes them.
pub fn borrowed(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect()
}

/// The outcome of one `dispatch --once --json`.
pub struct Pass {
    pub code: i32,
    pub report: Value,
    pub stderr: String,
}

impl From<Output> for Pass {
    fn from(out: Output) -> Pass {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Pass {
            code: out.status.code().unwrap_or(-1),
            report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Pass {
    /// Panic with stderr unless the pass exited 0.
    pub fn ok(self) -> Pass {
        assert_eq!(self.code, 0, "dispatch failed:\n{}", self.stderr);
        self
    }

    /// The report's status of the request from `file`.
    pub fn by_file(&self, file: &str) -> Value {
        self.report["requests"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["file"] == file))
            .cloned()
            .unwrap_or_else(|| panic!("{file:?} is not in the report: {:#}", self.report))
    }

    /// The state of each request in the report, by id.
    pub fn states(&self) -> std::collections::BTreeMap<String, String> {
        self.report["requests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["id"].as_str().unwrap().to_string(),
                            s["state"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parse an RFC 3339 timestamp of ours to milliseconds since midnight-ish ordering.
pub fn ms(ts: &str) -> u64 {
    // "2026-11-24T14:35:09.674Z": compare within one test run; dates are the same day or later.
    let digits: String = ts.chars().filter(|c| c.is_ascii_digit()).collect();
    let day: u64 = digits[..8].parse().unwrap();
    let h: u64 = digits[8..10].parse().unwrap();
    let m: u64 = digits[10..12].parse().unwrap();
    let s: u64 = digits[12..14].parse().unwrap();
    let milli: u64 = digits[14..17].parse().unwrap();
    day * 86_400_000 + ((h * 60 + m) * 60 + s) * 1000 + milli
}

/// `GET {base}{path}` on a forge API with a bearer token, as JSON (curl keeps tests free of an
/// HTTP client where one call is all they need).
pub fn forge_get(base: &str, token: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{base}{path}"),
        ])
        .output()
        .expect("run curl");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A `codex-runner run` process, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`, as the daemon printed it.
    pub url: String,
    /// `http://127.0.0.1:PORT` of its operator's listener (metrics, health, status), as the
    /// daemon printed it.
    pub ops: String,
    /// Its stderr (the tracing log), shown when a test fails.
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- daemon log ---\n{log}--- end of daemon log ---");
        }
    }
}

/// Start `codex-runner run --config config` and wait for the line naming its address.
pub fn spawn_daemon(config: &Path) -> Daemon {
    spawn_daemon_env(config, &[])
}

/// [`spawn_daemon`] with extra environment variables.
pub fn spawn_daemon_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
    use std::io::BufRead;
    let log = config.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_codex-runner"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("CODEX_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    // Keep reading, as a terminal or the journal would: pass summaries follow.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = first.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let ops = second.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        second.starts_with("codex-runner metrics, health and status on http://127.0.0.1:"),
        "{second}"
    );
    Daemon {
        child,
        url,
        ops,
        log,
    }
}

/// The value of the sample `name` (with its labels, as exposed) on the daemon's `/metrics`.
pub async fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", d.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The daemon's `/status` answer (on its operator's listener).
pub async fn health(d: &Daemon) -> Value {
    reqwest::get(format!("{}/status", d.ops))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Poll `ok` until it holds; fail after 90 s naming `what`.
pub async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A repository (the template on main) whose remote is acme/ops on a fresh local forge that
/// knows `tokens`; the first token is the one the working clone pushes with.
pub async fn on_forge(runner: &str, tokens: Vec<forge_sim::Token>) -> (forge_sim::ForgeSim, Repo) {
    let mut repo = Repo::new(runner);
    let pusher = tokens[0].value.clone();
    let sim = forge_sim::ForgeSim::start(&repo.tmp.path().join("forge"), 0, tokens)
        .await
        .unwrap();
    sim.create_repo("acme", "ops").unwrap();
    repo.git(&[
        "remote",
        "set-url",
        "origin",
        &sim.git_url("acme", "ops", Some(&pusher)),
    ]);
    repo.git(&["push", "-q", "origin", "main"]);
    repo.origin = sim.repo_path("acme", "ops");
    (sim, repo)
}

impl Repo {
    /// Add handler `kind`: its script (made executable) and its `handlers/index.yml` entry
    /// (the lines under `  kind:`), in the working clone, committed with the next PR.
    pub fn add_handler(&self, kind: &str, script: &str, entry: &str) {
        let path = format!("handlers/{kind}.sh");
        self.write(&path, script.as_bytes());
        sh(&self.work, "chmod", &["+x", &path]);
        let index = self.work.join("handlers/index.yml");
        let mut text = std::fs::read_to_string(&index).unwrap();
        text.push_str(&format!("\n  {kind}:\n    run: {path}\n{entry}"));
        std::fs::write(index, text).unwrap();
    }

    /// Add the `ledger` handler: it prints its attempt, sleeps `params.sleep` seconds, then
    /// records its effect in `ledger` once, and runs on the lock `params.resource`.
    pub fn add_ledger_handler(&self, ledger: &Ledger) {
        self.add_handler(
            "ledger",
            "#!/bin/sh\nset -eu\necho \"attempt ${CODEX_ATTEMPT} of ${CODEX_REQUEST_ID}\"\nsleep \"${CODEX_PARAM_SLEEP:-0}\"\nwget -q -O- \"${LEDGER_URL}?id=${CODEX_REQUEST_ID}&attempt=${CODEX_ATTEMPT}\"\necho recorded\n",
            &format!(
                "    image: codex-runner/busybox:1\n    timeout: 2m\n    network: host\n    resource: \"{{{{ params.resource }}}}\"\n    env:\n      LEDGER_URL: \"http://127.0.0.1:{}/hit\"\n    params:\n      type: object\n      additionalProperties: false\n      required: [resource]\n      properties:\n        resource: {{ type: string }}\n        sleep: {{ type: string, pattern: \"^[0-9.]+$\" }}\n",
                ledger.port
            ),
        );
    }

    /// Merge a PR adding `ledger` requests: (id, the flow mapping of its params).
    pub fn merge_ledger_requests(&mut self, requests: &[(String, String)]) -> String {
        let files: Vec<(String, Vec<u8>)> = requests
            .iter()
            .map(|(id, params)| {
                (
                    format!("requests/{id}.yaml"),
                    format!("kind: ledger\nparams: {params}\n").into_bytes(),
                )
            })
            .collect();
        self.merge_pr(&borrowed(&files))
    }

    /// A runner config for this repository's tests that lets handlers use the host network
    /// (to reach a [`Ledger`] on 127.0.0.1), with a 1 s grace period.
    pub fn host_network_config(&self) -> String {
        let path = self.tmp.path().join("host-network.toml");
        std::fs::write(
            &path,
            "[limits]\nallow_network_host = true\ngrace = \"1s\"\n",
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    }
}

/// A loopback HTTP server standing in for the world a handler changes: each
/// `GET /hit?id=<id>&attempt=<n>` is one effect, kept in order.
pub struct Ledger {
    pub port: u16,
    hits: std::sync::Arc<std::sync::Mutex<Vec<(String, u32)>>>,
}

impl Ledger {
    /// Listen on 127.0.0.1 on a free port.
    pub fn start() -> Ledger {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(&conn);
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or_default();
                    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
                    let field = |k: &str| {
                        query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                            .unwrap_or_default()
                            .to_string()
                    };
                    let id = field("id");
                    let attempt = field("attempt").parse().unwrap_or(0);
                    h.lock().unwrap().push((id, attempt));
                    let mut w = &conn;
                    let _ = w.write_all(
                        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                });
            }
        });
        Ledger { port, hits }
    }

    /// Every effect so far, in order.
    pub fn hits(&self) -> Vec<(String, u32)> {
        self.hits.lock().unwrap().clone()
    }

    /// The attempts recorded for `id`.
    pub fn attempts(&self, id: &str) -> Vec<u32> {
        self.hits()
            .into_iter()
            .filter(|(i, _)| i == id)
            .map(|(_, a)| a)
            .collect()
    }
}

/// `git daemon` serving a directory over git:// on loopback, with push enabled.
pub struct GitDaemon {
    child: std::process::Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &std::path::Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        GitDaemon::start_on(base, port)
    }

    /// A daemon on `port` (one that was there before comes back at the same address).
    pub fn start_on(base: &std::path::Path, port: u16) -> GitDaemon {
        // The daemon binary itself: `git daemon` would fork it and leave it behind on kill.
        let exec_path = sh(base, "git", &["--exec-path"]);
        let child =
            std::process::Command::new(std::path::Path::new(exec_path.trim()).join("git-daemon"))
                .args([
                    "--reuseaddr",
                    "--export-all",
                    "--enable=receive-pack",
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                    &format!("--base-path={}", base.display()),
                    &base.display().to_string(),
                ])
                .process_group(0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("git daemon");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // The daemon forks a child per connection: end the whole group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Where the template's layout (`codex.layout: sharded`) keeps `id`'s log on main.
pub fn log_path(id: &str) -> String {
    format!("logs/{}/{id}.jsonl", codex_runner::record::shard(id))
}

/// Where the template's layout keeps `id`'s status file on main.
pub fn status_path(id: &str) -> String {
    format!("logs/{}/{id}.status.json", codex_runner::record::shard(id))
}

/// Where the template's layout archives `id`'s request on main.
pub fn archived_path(id: &str) -> String {
    format!("processed/{}/{id}.yaml", codex_runner::record::shard(id))
}

/// Put a claim saying `body` on request `id` of main in the bare repository `origin`, directly
/// (no push, no hook): a claim another runner holds, or left behind.
pub fn put_claim(origin: &Path, id: &str, body: &str) {
    let empty_tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    let commit = sh(
        origin,
        "git",
        &[
            "-c",
            "user.name=elsewhere",
            "-c",
            "user.email=elsewhere@example.invalid",
            "commit-tree",
            empty_tree,
            "-m",
            body,
        ],
    );
    sh(
        origin,
        "git",
        &[
            "update-ref",
            &format!("refs/codex/claims/main/{id}"),
            commit.trim(),
        ],
    );
}
