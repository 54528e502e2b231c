//! What a pod gets instead of bind mounts: the files of the directories and files the engine
//! would mount, read from this host, to be carried by ConfigMaps (the checkout, the request)
//! and a Secret (file secrets). There is no shared disk between the runner and a node.

use std::path::Path;

use crate::exec::spec::ContainerSpec;
use crate::secrets::SECRETS_MOUNT;

use super::job::CODEX_DIR;

/// One file for the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its path under `/codex` (`repo/handlers/echo.sh`, `request.json`).
    pub path: String,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Executable (mode 0555, else 0444).
    pub executable: bool,
}

/// Everything a run's pod reads from this host.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// Files under `/codex`.
    pub files: Vec<File>,
    /// File secrets (name, bytes) for `/run/secrets`.
    pub secret_files: Vec<(String, Vec<u8>)>,
}

/// Read the mounts of `spec`. A mount outside `/codex` and `/run/secrets` cannot be carried;
/// a symbolic link is carried as the file it points to when that is inside the same mount,
/// and left out otherwise (a pod's projected files cannot be links).
pub fn collect(spec: &ContainerSpec) -> Result<Payload, String> {
    let mut out = Payload::default();
    for m in &spec.mounts {
        if m.target == SECRETS_MOUNT {
            for (rel, data, _) in read_tree(&m.source)? {
                out.secret_files.push((rel, data));
            }
            continue;
        }
        let Some(under) = m
            .target
            .strip_prefix(CODEX_DIR)
            .and_then(|t| t.strip_prefix('/'))
        else {
            return Err(format!(
                "the Kubernetes executor cannot give a pod {} (only files under {CODEX_DIR} and {SECRETS_MOUNT})",
                m.target
            ));
        };
        let meta = std::fs::metadata(&m.source)
            .map_err(|e| format!("failed to read {}: {e}", m.source.display()))?;
        if meta.is_dir() {
            for (rel, data, executable) in read_tree(&m.source)? {
                out.files.push(File {
                    path: format!("{under}/{rel}"),
                    data,
                    executable,
                });
            }
        } else {
            let data = std::fs::read(&m.source)
                .map_err(|e| format!("failed to read {}: {e}", m.source.display()))?;
            out.files.push(File {
                path: under.to_string(),
                data,
                executable: false,
            });
        }
    }
    Ok(out)
}

/// The regular files under `root` (relative path, bytes, executable), in path order; `.git`
/// is left out.
fn read_tree(root: &Path) -> Result<Vec<(String, Vec<u8>, bool)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let canon = root
        .canonicalize()
        .map_err(|e| format!("failed to read {}: {e}", root.display()))?;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("failed to read {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("failed to read {}: {e}", dir.display()))?;
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let target = if kind.is_symlink() {
                match path.canonicalize() {
                    Ok(t) if t.starts_with(&canon) && t.is_file() => t,
                    _ => {
                        tracing::debug!(path = %path.display(), "a link out of the checkout is not given to the pod");
                        continue;
                    }
                }
            } else if kind.is_file() {
                path.clone()
            } else {
                continue;
            };
            let data = std::fs::read(&target)
                .map_err(|e| format!("failed to read {}: {e}", target.display()))?;
            let executable = std::fs::metadata(&target)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            out.push((rel.to_string_lossy().into_owned(), data, executable));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::spec::Mount;

    #[test]
    fn the_mounts_become_files_under_codex_and_secrets() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join("handlers")).unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "x").unwrap();
        std::fs::write(repo.join("handlers/echo.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            repo.join("handlers/echo.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(repo.join("README"), "hi").unwrap();
        std::os::unix::fs::symlink("README", repo.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", repo.join("escape")).unwrap();
        std::fs::write(d.path().join("r.json"), "{}").unwrap();
        let secrets = d.path().join("s");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("KEY"), "k").unwrap();
        let mount = |source: &Path, target: &str| Mount {
            source: source.to_path_buf(),
            target: target.into(),
            read_only: true,
        };
        let mut spec = super::super::job::tests_spec();
        spec.mounts = vec![
            mount(&repo, "/codex/repo"),
            mount(&d.path().join("r.json"), "/codex/request.json"),
            mount(&secrets, SECRETS_MOUNT),
        ];
        let p = collect(&spec).unwrap();
        let paths: Vec<(&str, bool)> = p
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.executable))
            .collect();
        assert_eq!(
            paths,
            [
                ("repo/README", false),
                ("repo/handlers/echo.sh", true),
                ("repo/link", false),
                ("request.json", false),
            ]
        );
        assert_eq!(p.files[2].data, b"hi");
        assert_eq!(p.secret_files, [("KEY".to_string(), b"k".to_vec())]);
        spec.mounts = vec![mount(&repo, "/data")];
        assert!(collect(&spec)
            .unwrap_err()
            .contains("cannot give a pod /data"));
    }
}
