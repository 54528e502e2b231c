//! Pushing: several ref updates in one round trip, each its own compare-and-swap.
//!
//! Against a forge every push is a round trip of hundreds of milliseconds, so the runner asks
//! for what belongs together in one push: the claims of a resource's queue, a results commit
//! with the deletion of claims whose results an earlier push recorded. A push is not atomic
//! (libgit2 has no `--atomic`): each ref is compared and set on its own, one may be refused
//! while the others land, so nothing rides in a push whose refusal would make it unsafe.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use git2::{Oid, PushOptions, Repository};

use super::{callbacks, local_path, transport, Mirror, PUSHES};

/// What a ref must be on the remote for an update of it to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It does not exist (a first claim).
    Absent,
    /// It is this commit (a branch tip or claim as the pusher saw it).
    At(Oid),
    /// Whatever it is (deleting claims whose requests are recorded).
    Anything,
}

/// One ref update of a push: `name` set to `new` (`None`: deleted) if it is as `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref name.
    pub name: String,
    /// Its new value; `None` deletes it.
    pub new: Option<Oid>,
    /// What it must be now.
    pub expected: Expect,
}

impl RefUpdate {
    /// Delete `name`, whatever it points at.
    pub fn delete(name: &str) -> Self {
        RefUpdate {
            name: name.to_string(),
            new: None,
            expected: Expect::Anything,
        }
    }

    /// Set `name` to `new` if it is `seen` now (`None`: absent). Never forced: a git server
    /// also refuses what is not a fast-forward.
    pub fn swap(name: &str, new: Oid, seen: Option<Oid>) -> Self {
        RefUpdate {
            name: name.to_string(),
            new: Some(new),
            expected: seen.map_or(Expect::Absent, Expect::At),
        }
    }

    /// Why it cannot land on a ref that is `current` now; `None` when it can.
    fn refusal(&self, current: Option<Oid>) -> Option<Refusal> {
        let fits = match self.expected {
            Expect::Absent => current.is_none(),
            Expect::At(oid) => current == Some(oid),
            Expect::Anything => true,
        };
        (!fits).then(|| {
            let wanted = match self.expected {
                Expect::At(oid) => Some(oid),
                _ => None,
            };
            Refusal::moved(&self.name, current, wanted)
        })
    }
}

/// Why the remote refused one ref update of a push; the push's other updates stand on their
/// own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The ref is not what the update expected: another writer moved it first.
    #[error("{refname}: it is {found} where {expected} was expected")]
    Moved {
        /// The ref.
        refname: String,
        /// What it is (a commit id, or `absent`).
        found: String,
        /// What the update expected.
        expected: String,
    },
    /// Another writer held the ref's lock longer than a push waits.
    #[error("{refname}: another update holds its lock")]
    Locked {
        /// The ref.
        refname: String,
    },
    /// The server said no (not a fast-forward, a hook, a protection rule) and why.
    #[error("{refname}: {reason}")]
    Refused {
        /// The ref.
        refname: String,
        /// The server's words.
        reason: String,
    },
}

impl Refusal {
    /// `refname` is `found` where `expected` was expected (`None`: absent).
    pub(crate) fn moved(refname: &str, found: Option<Oid>, expected: Option<Oid>) -> Self {
        let shown = |o: Option<Oid>| o.map_or("absent".to_string(), |o| o.to_string());
        Refusal::Moved {
            refname: refname.to_string(),
            found: shown(found),
            expected: shown(expected),
        }
    }
}

/// What became of each update of a push, in order: `Ok(())`, or why the remote refused it.
pub type Outcomes = Vec<Result<(), Refusal>>;

impl Mirror {
    /// Push `updates` in one round trip (counted once in [`super::round_trips`]). `Err` when
    /// the remote could not be reached; refusals are per update. `crash` arms the `in-push`
    /// crash point after an update lands (results, not claims).
    pub(super) fn push_refs(&self, updates: &[RefUpdate], crash: bool) -> anyhow::Result<Outcomes> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        PUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match local_path(&self.url) {
            Some(path) => self.push_to_path(&path, updates, crash),
            None => self.push_served(updates, crash),
        }
    }

    /// A remote that is a local path: objects copied into its store, each ref compared and
    /// set inside a ref transaction there (see [`transport`]).
    fn push_to_path(
        &self,
        path: &Path,
        updates: &[RefUpdate],
        crash: bool,
    ) -> anyhow::Result<Outcomes> {
        let remote = Repository::open_bare(path)
            .with_context(|| format!("failed to open the remote {}", path.display()))?;
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            if let Some(new) = u.new {
                transport::copy_objects(&self.repo, &remote, new)
                    .with_context(|| format!("failed to copy objects to {}", path.display()))?;
            }
            let expected = match u.expected {
                Expect::Absent => None,
                Expect::At(oid) => Some(oid),
                Expect::Anything => match remote.find_reference(&u.name) {
                    Ok(found) => found.target(),
                    Err(e) if e.code() == git2::ErrorCode::NotFound => None,
                    Err(e) => return Err(e).with_context(|| format!("failed to read {}", u.name)),
                },
            };
            let updated = transport::swap_ref(&remote, &u.name, u.new, expected)
                .with_context(|| format!("failed to update {} on {}", u.name, path.display()))?;
            if updated.is_ok() && crash {
                crate::crashpoint::hit("in-push");
            }
            out.push(updated);
        }
        Ok(out)
    }

    /// A remote reached through a git server: the refs it advertises decide which updates
    /// can land (so one that cannot does not fail the others, as libgit2's own check would),
    /// and the server compares again under its ref locks.
    fn push_served(&self, updates: &[RefUpdate], crash: bool) -> anyhow::Result<Outcomes> {
        let mut remote = self.repo.find_remote("origin")?;
        let token = self.token.as_deref();
        let _auth = super::https::Auth::scope(token);
        transport::retry(self.repo.path(), self.attempts, "a push", || {
            let mut conn =
                remote.connect_auth(git2::Direction::Push, Some(callbacks(token)), None)?;
            let advertised: HashMap<String, Oid> = conn
                .list()?
                .iter()
                .filter(|h| !h.oid().is_zero())
                .map(|h| (h.name().to_string(), h.oid()))
                .collect();
            let mut out: Vec<Option<Result<(), Refusal>>> = Vec::with_capacity(updates.len());
            let mut specs = Vec::new();
            for u in updates {
                let current = advertised.get(&u.name).copied();
                if let Some(why) = u.refusal(current) {
                    out.push(Some(Err(why)));
                } else if u.new.is_none() && current.is_none() {
                    out.push(Some(Ok(())));
                } else {
                    specs.push(match u.new {
                        Some(new) => format!("{new}:{}", u.name),
                        None => format!(":{}", u.name),
                    });
                    out.push(None);
                }
            }
            if !specs.is_empty() {
                let mut refused: HashMap<String, String> = HashMap::new();
                let mut cbs = callbacks(token);
                cbs.push_update_reference(|name, status| {
                    match status {
                        Some(msg) => {
                            refused.insert(name.to_string(), msg.to_string());
                        }
                        None if crash => crate::crashpoint::hit("in-push"),
                        None => {}
                    }
                    Ok(())
                });
                let mut opts = PushOptions::new();
                opts.remote_callbacks(cbs);
                let pushed = conn.remote().push(&specs, Some(&mut opts));
                drop(opts);
                if let Err(e) = pushed {
                    if e.code() != git2::ErrorCode::NotFastForward
                        && !e.message().contains("fast-forward")
                        && !e.message().contains("fastforward")
                    {
                        return Err(e);
                    }
                    // Refused as a whole before anything was sent: every update pushed.
                    let text = e.message().to_string();
                    for (o, u) in out.iter_mut().zip(updates).filter(|(o, _)| o.is_none()) {
                        *o = Some(Err(Refusal::Refused {
                            refname: u.name.clone(),
                            reason: text.clone(),
                        }));
                    }
                }
                for (o, u) in out.iter_mut().zip(updates) {
                    if o.is_none() {
                        *o = Some(match refused.get(&u.name) {
                            Some(msg) => Err(Refusal::Refused {
                                refname: u.name.clone(),
                                reason: msg.clone(),
                            }),
                            None => Ok(()),
                        });
                    }
                }
            }
            Ok(out.into_iter().map(|o| o.unwrap_or(Ok(()))).collect())
        })
        .with_context(|| format!("failed to push to {}", self.shown_url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_lands_only_on_the_value_it_expects() {
        let a = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let b = Oid::from_str("2222222222222222222222222222222222222222").unwrap();
        let first = RefUpdate::swap("refs/x", b, None);
        assert_eq!(first.refusal(None), None);
        assert!(first
            .refusal(Some(a))
            .is_some_and(|w| w.to_string().contains("where absent was expected")));
        let renewal = RefUpdate::swap("refs/x", b, Some(a));
        assert_eq!(renewal.refusal(Some(a)), None);
        assert!(renewal.refusal(None).is_some());
        assert!(renewal.refusal(Some(b)).is_some());
        let gone = RefUpdate::delete("refs/x");
        assert_eq!(gone.refusal(None), None);
        assert_eq!(gone.refusal(Some(a)), None);
    }
}
