//! The transports the runner brings itself, each through a whole pass (a shallow fetch, the
//! queue's claims, the results, the claims' release): git over https through rustls, and git
//! over ssh through the system's ssh client. A failure that will not change (an untrusted
//! certificate, a refused token or key) ends the pass at once instead of being retried.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{docker, Repo};
use forge_sim::Token;

const TOKEN: &str = "ghp_runner";

const REQUEST: &[u8] = b"kind: echo\nparams: {message: over the wire}\n";

/// Claim refs left on the remote.
fn claims(repo: &Repo) -> String {
    crate::common::sh(
        &repo.origin,
        "git",
        &["for-each-ref", "--format=%(refname)", "refs/codex/"],
    )
}

/// A TLS front on 127.0.0.1 for the plain HTTP server at `backend`, with a certificate for
/// 127.0.0.1 signed by a CA of its own (`ca`, PEM); it counts the connections it takes.
struct TlsFront {
    port: u16,
    ca: PathBuf,
    connections: Arc<AtomicUsize>,
}

async fn tls_front(backend: SocketAddr, dir: &Path) -> TlsFront {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    TlsFront {
        port,
        ca: ca_file,
        connections,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_https_fetches_claims_and_pushes_through_rustls() {
    docker();
    let (sim, mut repo) = crate::common::on_forge("t-https", vec![Token::full(TOKEN)]).await;
    let backend: SocketAddr = sim.url().trim_start_matches("http://").parse().unwrap();
    let front = tls_front(backend, repo.tmp.path()).await;
    repo.merge_pr(&[("requests/secure.yaml", REQUEST)]);
    let url = format!("https://127.0.0.1:{}/acme/ops.git", front.port);
    // The token reaches git as the forge's credentials do (`x-access-token`).
    let token_file = repo.tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let api = sim.url();
    let forge = [
        "--forge-api",
        api.as_str(),
        "--forge-repo",
        "acme/ops",
        "--forge-token-file",
        token_file.to_str().unwrap(),
    ];
    let dispatch = |env: &[(&str, &str)], url: &str| {
        tokio::task::block_in_place(|| {
            let started = Instant::now();
            let pass = crate::common::Pass::from(
                repo.dispatch_command(url, &forge)
                    .envs(env.iter().copied())
                    .output()
                    .unwrap(),
            );
            (pass, started.elapsed())
        })
    };

    // A certificate no one trusts: final, not tried again.
    let (pass, took) = dispatch(&[], &url);
    assert_eq!(pass.code, 4, "{}", pass.stderr);
    assert!(pass.stderr.contains("TLS with"), "{}", pass.stderr);
    assert!(took < Duration::from_secs(5), "retried: {took:?}");
    assert_eq!(front.connections.load(Ordering::SeqCst), 1);

    // A token the forge refuses, in the URL: final too, and the token never shown.
    let ca = front.ca.to_str().unwrap();
    let trusted = [("SSL_CERT_FILE", ca)];
    let wrong = format!(
        "https://x-access-token:ghp_wrong@127.0.0.1:{}/acme/ops.git",
        front.port
    );
    let pass = tokio::task::block_in_place(|| {
        crate::common::Pass::from(
            repo.dispatch_command(&wrong, &[])
                .envs(trusted)
                .output()
                .unwrap(),
        )
    });
    assert_eq!(pass.code, 4, "{}", pass.stderr);
    assert!(
        pass.stderr.contains("401") && pass.stderr.contains("check the token"),
        "{}",
        pass.stderr
    );
    assert!(!pass.stderr.contains("ghp_wrong"), "{}", pass.stderr);
    assert_eq!(front.connections.load(Ordering::SeqCst), 2, "one try");

    // Trusted, with the runner's token: the whole pass goes through the front.
    let (pass, _) = dispatch(&trusted, &url);
    assert_eq!(pass.code, 0, "{}", pass.stderr);
    assert_eq!(pass.states()["secure"], "succeeded");
    assert_eq!(repo.status("secure")["state"], "succeeded");
    assert_eq!(claims(&repo).trim(), "", "claims released over https");
    let pushes = pass.report["round_trips"]["pushes"].as_u64();
    assert!(pushes >= Some(3), "{}", pass.report);
    let used = front.connections.load(Ordering::SeqCst) - 2;
    assert!(used >= 1, "the pass did not go through the TLS front");
}

/// An sshd on loopback for the current user, with a key of its own for the client.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
    user: String,
}

impl Sshd {
    /// A `GIT_SSH_COMMAND` that offers only `key` and trusts only this server's host key.
    fn command(&self, key: &Path) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            key.display(),
            self.dir.join("known_hosts").display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key pair at `path`; the public key.
fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

fn sshd(dir: &Path) -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "these tests need sshd (Debian: openssh-server); .ci/run installs it"
    );
    let dir = dir.join("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host = keygen(&dir.join("host"));
    let client = keygen(&dir.join("client"));
    std::fs::write(dir.join("authorized_keys"), &client).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host_key: Vec<&str> = host.split_whitespace().take(2).collect();
    std::fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
    )
    .unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            dir.join("host").display(),
            dir.join("authorized_keys").display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    Sshd {
        child,
        port,
        dir,
        user,
    }
}

#[test]
fn a_pass_over_ssh_fetches_claims_and_pushes_through_the_system_client() {
    docker();
    let mut repo = Repo::new("t-ssh");
    let server = sshd(repo.tmp.path());
    repo.merge_pr(&[("requests/shell.yaml", REQUEST)]);
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        server.user,
        server.port,
        repo.origin.display()
    );

    // A key the server does not know: final, not tried again.
    let stranger = repo.tmp.path().join("stranger");
    keygen(&stranger);
    let started = Instant::now();
    let pass = crate::common::Pass::from(
        repo.dispatch_command(&url, &[])
            .env("GIT_SSH_COMMAND", server.command(&stranger))
            .output()
            .unwrap(),
    );
    assert_eq!(pass.code, 4, "{}", pass.stderr);
    assert!(pass.stderr.contains("Permission denied"), "{}", pass.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "retried");

    let pass = crate::common::Pass::from(
        repo.dispatch_command(&url, &[])
            .env(
                "GIT_SSH_COMMAND",
                server.command(&server.dir.join("client")),
            )
            .output()
            .unwrap(),
    );
    assert_eq!(pass.code, 0, "{}", pass.stderr);
    assert_eq!(pass.states()["shell"], "succeeded");
    assert_eq!(repo.status("shell")["state"], "succeeded");
    assert_eq!(claims(&repo).trim(), "", "claims released over ssh");
}
