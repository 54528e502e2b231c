//! `codex-runner selftest`: does this host have what a pass needs?

use crate::exit;
use std::path::PathBuf;

use crate::config::HostConfig;
use crate::engine::locks::ResourceLocks;
use crate::exec::DockerExecutor;
use crate::git::seed::{SeedFile, SeedRepo};
use crate::git::{Change, Identity, Mirror};

use super::template::BASE_IMAGES;

/// Arguments of `selftest`.
#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// Host config to check.
    #[arg(long, env = "CODEX_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory to check [default: as `dispatch`].
    #[arg(long, env = "CODEX_RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Run every check; 0 only when all pass.
pub async fn run(a: SelftestArgs) -> i32 {
    let mut failed = 0;
    let mut check = |name: &str, r: anyhow::Result<String>| match r {
        Ok(detail) => println!("ok   {name}: {detail}"),
        Err(e) => {
            failed += 1;
            println!("FAIL {name}: {e:#}");
        }
    };
    // The config `register` wrote, where every command looks for it, unless one is named.
    let config = super::paths::config_or_default(a.config.clone());
    let named = a.config.is_some();
    let host = if named || config.exists() {
        HostConfig::load(&config).map(Some)
    } else {
        Ok(None)
    };
    let state_dir = a
        .state_dir
        .clone()
        .or_else(|| {
            host.as_ref()
                .ok()
                .and_then(|h| h.as_ref().and_then(|h| h.state_dir.clone()))
        })
        .unwrap_or_else(super::paths::default_state_dir);
    check(
        "config",
        host.as_ref()
            .map(|h| match h {
                Some(_) => format!("{} parses", config.display()),
                None => format!("no host config at {}; defaults apply", config.display()),
            })
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    );
    let kubernetes = match &host {
        Ok(Some(h)) => match &h.executor {
            crate::config::ExecutorConfig::Kubernetes(k) => Some(k.clone()),
            crate::config::ExecutorConfig::Docker => None,
        },
        _ => None,
    };
    match kubernetes {
        // Handlers run in a cluster: this host may well have no Docker at all.
        Some(k) => check("kubernetes", cluster(&k).await),
        None => check("docker", docker().await),
    }
    check("git", git_roundtrip());
    check("state dir", state(&state_dir).await);
    if failed == 0 {
        println!("selftest passed");
        exit::OK
    } else {
        println!("selftest failed: {failed} check(s)");
        exit::FAILED
    }
}

async fn docker() -> anyhow::Result<String> {
    let d = DockerExecutor::connect().await?;
    let version = d.version().await?;
    let missing: Vec<&str> = {
        let mut m = Vec::new();
        for img in BASE_IMAGES {
            if d.ensure_image_present(img).await.is_err() {
                m.push(*img);
            }
        }
        m
    };
    let images = if missing.is_empty() {
        "example images present".to_string()
    } else {
        format!(
            "example images missing: {} (bash containers/build-images.sh)",
            missing.join(", ")
        )
    };
    Ok(format!("engine {version}; {images}"))
}

/// The API server answers and the runner may do all it needs in its namespace.
async fn cluster(config: &crate::exec::kubernetes::KubernetesConfig) -> anyhow::Result<String> {
    let c = crate::exec::KubernetesExecutor::connect(config).await?;
    c.access()
        .await
        .map(|about| format!("{about}; the runner may do all it needs there"))
        .map_err(anyhow::Error::msg)
}

fn git_roundtrip() -> anyhow::Result<String> {
    let tmp = std::env::temp_dir().join(format!("codex-selftest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let origin = SeedRepo::init_bare(&tmp.join("origin.git"))?;
        origin.commit(
            "refs/heads/main",
            &[],
            &[SeedFile {
                path: "README",
                bytes: b"x",
                executable: false,
            }],
            "seed",
        )?;
        let mirror = Mirror::open(
            &tmp.join("work"),
            &tmp.join("origin.git").to_string_lossy(),
            None,
        )?;
        let who = Identity {
            name: "selftest".into(),
            email: "selftest@localhost".into(),
        };
        let change = Change::Write {
            path: "logs/selftest".into(),
            bytes: b"ok".to_vec(),
        };
        let p = mirror.publish("main", &[change], "selftest", &who, 1)?;
        anyhow::Ok(format!(
            "libgit2 {} fetched, committed and pushed {}",
            crate::git::libgit2_version(),
            p.commit.short()
        ))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn state(dir: &std::path::Path) -> anyhow::Result<String> {
    let locks = ResourceLocks::new(&dir.join("locks"))?;
    let lock = locks.acquire("selftest", || {}).await?;
    drop(lock);
    let probe = dir.join("selftest.probe");
    std::fs::write(&probe, b"ok").map_err(anyhow::Error::from)?;
    std::fs::remove_file(&probe)?;
    Ok(format!("{} writable, flock works", dir.display()))
}
