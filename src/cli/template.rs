//! What the product knows of the operations-repository template: the base images its
//! handlers use (the demo crate embeds the template itself).

/// Images the template's handlers use that `containers/build-images.sh` builds.
pub const BASE_IMAGES: &[&str] = &["codex-runner/busybox:1", "codex-runner/python:3"];
