//! git over ssh, through the system's ssh client, as git itself reaches ssh remotes: the
//! operator's `~/.ssh/config`, keys, agent and `known_hosts` apply, and `GIT_SSH_COMMAND`
//! (or `GIT_SSH`) replaces the client. The client runs in batch mode: an unknown host key or a
//! key that needs a passphrase fails instead of prompting.
//!
//! (libgit2's own ssh goes through libssh2 and OpenSSL, which every runner process would load
//! and start, whatever the remote.)

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{Error, ErrorClass, ErrorCode};

/// The URL schemes this transport answers, besides scp-like `user@host:path`.
const SCHEMES: [&str; 3] = ["ssh", "ssh+git", "git+ssh"];

/// Register this transport (once per process, before any remote is reached).
pub(super) fn register() -> Result<(), Error> {
    for scheme in SCHEMES {
        // SAFETY: called once, under the `Once` in `super::transports`, before any transport
        // is created.
        unsafe {
            git2::transport::register(scheme, |remote| Transport::smart(remote, false, Ssh))?;
        }
    }
    Ok(())
}

/// Where an ssh remote is: `[user@]host`, the port, and the repository's path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    destination: String,
    port: Option<String>,
    path: String,
}

/// `ssh://[user@]host[:port]/path` (and its aliases) or scp-like `[user@]host:path`.
fn parse(url: &str) -> Result<Target, String> {
    let bad = || format!("`{url}` is not an ssh remote git understands");
    let target = match url.split_once("://") {
        Some((scheme, rest)) if SCHEMES.contains(&scheme) => {
            let (authority, path) = rest.split_at(rest.find('/').ok_or_else(bad)?);
            let (destination, port) = match authority.rsplit_once(':') {
                Some((d, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    (d.to_string(), Some(p.to_string()))
                }
                _ => (authority.to_string(), None),
            };
            // `ssh://host/~user/repo` is relative to a home directory, as in git.
            let path = path
                .strip_prefix("/~")
                .map_or(path.to_string(), |p| format!("~{p}"));
            Target {
                destination,
                port,
                path,
            }
        }
        Some(_) => return Err(bad()),
        None => {
            let (destination, path) = url.split_once(':').ok_or_else(bad)?;
            Target {
                destination: destination.to_string(),
                port: None,
                path: path.to_string(),
            }
        }
    };
    // A host that starts with a dash would be read by ssh as an option.
    if target.destination.is_empty()
        || target.destination.starts_with('-')
        || target.path.is_empty()
    {
        return Err(bad());
    }
    Ok(target)
}

/// `s` quoted for the remote shell, as git quotes the repository path.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command that reaches `target` and starts `service` there.
fn command(target: &Target, service: &str) -> Command {
    let mut args: Vec<String> = vec!["-o".into(), "BatchMode=yes".into()];
    if let Some(port) = &target.port {
        args.extend(["-p".into(), port.clone()]);
    }
    args.push(target.destination.clone());
    args.push(format!("{service} {}", quote(&target.path)));
    let mut cmd = match (
        std::env::var("GIT_SSH_COMMAND")
            .ok()
            .filter(|c| !c.trim().is_empty()),
        std::env::var_os("GIT_SSH").filter(|c| !c.is_empty()),
    ) {
        (Some(shell), _) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("{shell} \"$@\"")).arg("ssh");
            c
        }
        (None, Some(program)) => Command::new(program),
        (None, None) => Command::new("ssh"),
    };
    cmd.args(args);
    cmd
}

/// One remote operation's ssh transport: a stateful connection, one client process.
struct Ssh;

impl SmartSubtransport for Ssh {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        let service = match action {
            Service::UploadPackLs | Service::UploadPack => "git-upload-pack",
            Service::ReceivePackLs | Service::ReceivePack => "git-receive-pack",
        };
        let target =
            parse(url).map_err(|why| Error::new(ErrorCode::Invalid, ErrorClass::Ssh, why))?;
        let mut child = command(&target, service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorCode::GenericError,
                    ErrorClass::Ssh,
                    format!("ssh: failed to start the ssh client: {e}"),
                )
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        // The last few KiB say why; the rest is noise.
                        s.extend_from_slice(&buf[..n]);
                        let over = s.len().saturating_sub(4096);
                        s.drain(..over);
                    }
                }
            });
        }
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        Ok(Box::new(Connection {
            destination: target.destination,
            child,
            stdin,
            stdout,
            stderr,
        }))
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// A running ssh client: libgit2 writes to its stdin and reads its stdout.
struct Connection {
    destination: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Connection {
    /// Why the client ended, once it has: its exit and the last of what it said.
    fn failure(&mut self) -> Option<io::Error> {
        self.stdin.take();
        let status = self.child.wait().ok()?;
        if status.success() {
            return None;
        }
        // Give the stderr reader a moment to take the client's last words.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let said = self
            .stderr
            .lock()
            .map(|s| String::from_utf8_lossy(&s).trim().to_string())
            .unwrap_or_default();
        let exit = status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
        Some(io::Error::other(format!(
            "ssh: {} ended the connection ({exit}): {}",
            self.destination,
            if said.is_empty() { "no message" } else { &said }
        )))
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.stdout {
            Some(out) => out.read(buf)?,
            None => 0,
        };
        if n == 0 && !buf.is_empty() {
            if let Some(e) = self.failure() {
                return Err(e);
            }
        }
        Ok(n)
    }
}

impl Write for Connection {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = match &mut self.stdin {
            Some(input) => input.write(data),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(self.failure().unwrap_or(e)),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(input) => input.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing stdin ends the server's side; a client that lingers is stopped.
        self.stdin.take();
        self.stdout.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Whether a failure the ssh client reported will be the same next time: refused keys, an
/// unknown or changed host key, a repository the server does not have.
pub(super) fn is_final(message: &str) -> bool {
    message.starts_with("ssh: ")
        && [
            "Permission denied",
            "Host key verification failed",
            "does not appear to be a git repository",
            "not a git repository",
            "Could not resolve hostname",
        ]
        .iter()
        .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_destination_port_and_path_as_git_reads_them() {
        let t = |d: &str, p: Option<&str>, path: &str| Target {
            destination: d.into(),
            port: p.map(str::to_string),
            path: path.into(),
        };
        assert_eq!(
            parse("ssh://git@forge.example:2222/ops/repo.git"),
            Ok(t("git@forge.example", Some("2222"), "/ops/repo.git"))
        );
        assert_eq!(
            parse("git+ssh://forge.example/~ops/repo.git"),
            Ok(t("forge.example", None, "~ops/repo.git"))
        );
        assert_eq!(
            parse("git@forge.example:ops/repo.git"),
            Ok(t("git@forge.example", None, "ops/repo.git"))
        );
        assert!(parse("ssh://-oProxyCommand=x/repo").is_err());
        assert!(parse("-oProxyCommand=x:repo").is_err());
        assert!(parse("ssh://forge.example").is_err());
    }

    #[test]
    fn the_path_is_quoted_for_the_remote_shell() {
        assert_eq!(quote("/srv/it's.git"), r"'/srv/it'\''s.git'");
        let cmd = command(
            &Target {
                destination: "git@h".into(),
                port: Some("22".into()),
                path: "/srv/a b.git".into(),
            },
            "git-upload-pack",
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[args.len() - 2..],
            ["git@h", "git-upload-pack '/srv/a b.git'"]
        );
    }

    #[test]
    fn refusals_are_final_and_dropped_connections_are_not() {
        assert!(is_final(
            "ssh: h ended the connection (exit 255): git@h: Permission denied (publickey)."
        ));
        assert!(!is_final(
            "ssh: h ended the connection (exit 255): Connection reset by peer"
        ));
    }
}
