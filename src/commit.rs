//! A commit id: the one type every module above the git wall names commits with.
//!
//! `git/` converts to and from libgit2's ids at its edge; the engine, the planner, the records
//! and the executors carry a `CommitId` and never parse or compare commit text themselves. It
//! is written (in JSON, in messages, in container labels) as the 40 lowercase hex digits git
//! shows.

use std::fmt;
use std::str::FromStr;

/// A commit's SHA-1 id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId([u8; 20]);

impl CommitId {
    /// The all-zero id git writes where there is no commit (a hook's "old" side of a new
    /// branch); `validate` names the working tree's files with it.
    pub const NONE: CommitId = CommitId([0; 20]);

    /// The id from its 20 bytes (the git wall's conversion).
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        CommitId(bytes)
    }

    /// Its 20 bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The first 12 hex digits, as messages and tables show a commit.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

/// Text that does not name a commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a commit id (40 hexadecimal digits)")]
pub struct NotACommitId(pub String);

impl FromStr for CommitId {
    type Err = NotACommitId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 20];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) => Ok(CommitId(bytes)),
            Err(_) => Err(NotACommitId(text.chars().take(64).collect())),
        }
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({self})")
    }
}

impl serde::Serialize for CommitId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CommitId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_id_reads_and_writes_as_git_shows_it() {
        let text = "0123456789abcdef0123456789abcdef01234567";
        let id: CommitId = text.parse().unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(id.short(), "0123456789ab");
        let upper: CommitId = text.to_uppercase().parse().unwrap();
        assert_eq!(upper, id, "hex digits are read in either case");
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        let back: CommitId = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn text_that_is_not_a_commit_id_is_refused_by_name() {
        for bad in ["", "0123", "main", &"g".repeat(40), &"0".repeat(41)] {
            let err = bad.parse::<CommitId>().unwrap_err();
            assert!(err.to_string().contains("is not a commit id"), "{err}");
        }
        let err = serde_json::from_str::<CommitId>("\"HEAD\"").unwrap_err();
        assert!(
            err.to_string().contains("`HEAD` is not a commit id"),
            "{err}"
        );
    }
}
