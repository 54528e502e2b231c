//! git over https, through rustls (ureq), the TLS stack the forge API already uses.
//!
//! libgit2's own https would link OpenSSL and start it in every runner process, whatever the
//! remote: 5.9 of an idle daemon's 18 MiB. This transport speaks git's smart HTTP protocol
//! (`info/refs` advertisement, then `git-upload-pack` or `git-receive-pack` POSTs) and
//! libgit2 does the rest; plain `http://` stays with libgit2's own transport.
//!
//! Trust: the system's certificates (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`),
//! read at the first https connection; Mozilla's roots when the system has none. Proxies:
//! `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY`. Credentials: the token of the operation
//! ([`Auth::scope`], the forge's `x-access-token`), else those in the URL, else git's
//! credential helper once the server asks.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{Error, ErrorClass, ErrorCode};

type Response = ureq::http::Response<ureq::Body>;

thread_local! {
    /// The token of the remote operation running on this thread.
    static TOKEN: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The credentials of the https transports a remote operation creates on this thread, for as
/// long as the scope lives.
pub(crate) struct Auth {
    before: Option<String>,
}

impl Auth {
    /// Use `token` (as `x-access-token`) for the https remotes reached until the scope ends.
    pub(crate) fn scope(token: Option<&str>) -> Auth {
        let before = TOKEN.with(|t| t.replace(token.map(str::to_string)));
        Auth { before }
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        TOKEN.with(|t| *t.borrow_mut() = self.before.take());
    }
}

/// Register this transport for `https://` (once per process, before any remote is reached).
pub(super) fn register() -> Result<(), Error> {
    // SAFETY: called once, under the `Once` in `super::transports`, before any transport is
    // created.
    unsafe {
        git2::transport::register("https", |remote| {
            let token = TOKEN.with(|t| t.borrow().clone());
            Transport::smart(
                remote,
                true,
                Https {
                    token,
                    base: Mutex::new(None),
                },
            )
        })
    }
}

/// One remote operation's https transport.
struct Https {
    token: Option<String>,
    /// Where the repository answered from, when `info/refs` was redirected: the POSTs go
    /// there directly (a 301 or 302 would turn them into GETs).
    base: Mutex<Option<String>>,
}

/// The agent every https transport shares, so that connections are reused between an
/// operation's requests (and the next operation's, within the pool's idle time).
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        let roots: Vec<ureq::tls::Certificate<'static>> = loaded
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let roots = if roots.is_empty() {
            tracing::warn!(
                "no system certificates found; trusting Mozilla's roots for git over https"
            );
            ureq::tls::RootCerts::WebPki
        } else {
            ureq::tls::RootCerts::Specific(Arc::new(roots))
        };
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!(
                "git/2.0 (codex-runner {})",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(600)))
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .new_agent()
    })
}

/// A URL without its user and password, and those as a `Basic` credential.
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map_or_else(|_| s.to_string(), |d| d.into_owned())
            };
            (
                format!("{scheme}://{host}{}", &rest[host_end..]),
                Some(basic(&decode(user), &decode(pass))),
            )
        }
        None => (url.to_string(), None),
    }
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// git's credential helpers' answer for `url` (`git credential fill`), as a `Basic` credential.
fn helper_credentials(url: &str) -> Option<String> {
    let config = git2::Config::open_default().ok()?;
    let (user, password) = git2::CredentialHelper::new(url).config(&config).execute()?;
    Some(basic(&user, &password))
}

/// The service's name on the wire.
fn service_name(service: Service) -> &'static str {
    match service {
        Service::UploadPackLs | Service::UploadPack => "git-upload-pack",
        Service::ReceivePackLs | Service::ReceivePack => "git-receive-pack",
    }
}

/// The error of an HTTP status, in the terms the retry policy reads
/// (`super::transport::transient`): credentials refused and a missing repository are final.
fn status_error(status: u16, url: &str) -> Error {
    let code = match status {
        401 | 403 => ErrorCode::Auth,
        404 => ErrorCode::NotFound,
        _ => ErrorCode::GenericError,
    };
    let why = match status {
        401 | 403 => "; check the token or the remote URL",
        _ => "",
    };
    Error::new(
        code,
        ErrorClass::Http,
        format!("unexpected http status code: {status} from {url}{why}"),
    )
}

/// A failure to reach the server at all (network, TLS), for libgit2.
fn request_error(e: ureq::Error, url: &str) -> Error {
    let tls = match &e {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match tls {
        // The server's certificate will not be trusted on a second try either.
        Some(t @ rustls::Error::InvalidCertificate(_)) => Error::new(
            ErrorCode::Certificate,
            ErrorClass::Ssl,
            format!("TLS with {url} failed: {t}; is its certificate's CA in SSL_CERT_FILE or the system's store?"),
        ),
        Some(t) => Error::new(
            ErrorCode::GenericError,
            ErrorClass::Ssl,
            format!("TLS with {url} failed: {t}"),
        ),
        None => Error::new(
            ErrorCode::GenericError,
            ErrorClass::Net,
            format!("failed to reach {url}: {e}"),
        ),
    }
}

/// Send a request with `token` (else the URL's credentials); once more with git's credential
/// helper's when the server asks for credentials and none were given.
fn send(
    token: Option<&str>,
    url: &str,
    build: impl Fn(&str, Option<&str>) -> Result<Response, ureq::Error>,
) -> Result<Response, Error> {
    let (bare, in_url) = split_userinfo(url);
    let auth = match token {
        Some(t) => Some(basic("x-access-token", t)),
        None => in_url,
    };
    let response = build(&bare, auth.as_deref()).map_err(|e| request_error(e, &bare))?;
    if response.status() == 401 && auth.is_none() {
        if let Some(helper) = helper_credentials(&bare) {
            return build(&bare, Some(&helper)).map_err(|e| request_error(e, &bare));
        }
    }
    Ok(response)
}

impl SmartSubtransport for Https {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        let name = service_name(action);
        let base = self
            .base
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .unwrap_or_else(|| url.trim_end_matches('/').to_string());
        match action {
            Service::UploadPackLs | Service::ReceivePackLs => {
                let suffix = format!("/info/refs?service={name}");
                let response = send(
                    self.token.as_deref(),
                    &format!("{base}{suffix}"),
                    |u, auth| {
                        let mut r = agent().get(u);
                        if let Some(a) = auth {
                            r = r.header("Authorization", a);
                        }
                        r.call()
                    },
                )?;
                let status = response.status().as_u16();
                let (bare, _) = split_userinfo(&base);
                if status != 200 {
                    return Err(status_error(status, &bare));
                }
                let expected = format!("application/x-{name}-advertisement");
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if content_type != expected {
                    return Err(Error::new(
                        ErrorCode::GenericError,
                        ErrorClass::Http,
                        format!("{bare} is not a git server (it answered {content_type:?}, not {expected})"),
                    ));
                }
                use ureq::ResponseExt;
                let answered = response.get_uri().to_string();
                if let Some(moved) = answered.strip_suffix(&suffix) {
                    if moved != bare {
                        tracing::info!(from = %bare, to = %moved, "the git remote redirected");
                        if let Ok(mut b) = self.base.lock() {
                            *b = Some(moved.to_string());
                        }
                    }
                }
                Ok(Box::new(Answer {
                    body: Some(response.into_body().into_reader()),
                    post: None,
                }))
            }
            Service::UploadPack | Service::ReceivePack => Ok(Box::new(Answer {
                body: None,
                post: Some(Post {
                    url: format!("{base}/{name}"),
                    service: name,
                    token: self.token.clone(),
                    request: Vec::new(),
                }),
            })),
        }
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// A request libgit2 writes, sent when it starts reading the answer.
struct Post {
    url: String,
    service: &'static str,
    token: Option<String>,
    request: Vec<u8>,
}

/// The stream of one request and its answer.
struct Answer {
    body: Option<ureq::BodyReader<'static>>,
    post: Option<Post>,
}

impl Read for Answer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.body.is_none() {
            let post = self
                .post
                .take()
                .ok_or_else(|| io::Error::other("nothing was asked of the git server"))?;
            let request = &post.request;
            let response = send(post.token.as_deref(), &post.url, |u, auth| {
                let mut r = agent()
                    .post(u)
                    .header(
                        "Content-Type",
                        format!("application/x-{}-request", post.service),
                    )
                    .header("Accept", format!("application/x-{}-result", post.service));
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                r.send(&request[..])
            })
            .map_err(|e| io::Error::other(e.message().to_string()))?;
            let status = response.status().as_u16();
            if status != 200 {
                let (bare, _) = split_userinfo(&post.url);
                return Err(io::Error::other(
                    status_error(status, &bare).message().to_string(),
                ));
            }
            self.body = Some(response.into_body().into_reader());
        }
        match &mut self.body {
            Some(body) => body.read(buf),
            None => Ok(0),
        }
    }
}

impl Write for Answer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.post {
            Some(post) => {
                post.request.extend_from_slice(data);
                Ok(data.len())
            }
            None => Err(io::Error::other(
                "the git server's answer is being read; nothing more can be sent",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_a_header_and_leave_the_url() {
        let (bare, auth) = split_userinfo("https://bot:s%40cret@forge.example/ops.git");
        assert_eq!(bare, "https://forge.example/ops.git");
        assert_eq!(auth.as_deref(), Some(basic("bot", "s@cret").as_str()));
        let (bare, auth) = split_userinfo("https://forge.example/a@b/ops.git");
        assert_eq!(bare, "https://forge.example/a@b/ops.git");
        assert_eq!(auth, None);
    }

    #[test]
    fn statuses_map_to_final_or_transient_failures() {
        assert_eq!(status_error(401, "u").code(), ErrorCode::Auth);
        assert_eq!(status_error(404, "u").code(), ErrorCode::NotFound);
        let busy = status_error(503, "u");
        assert_eq!(busy.class(), ErrorClass::Http);
        assert!(busy
            .message()
            .starts_with("unexpected http status code: 503"));
    }
}
