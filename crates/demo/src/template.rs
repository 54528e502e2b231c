//! The operations-repository template, embedded so the demo needs no checkout.

/// `(path, bytes, executable)` of every template file.
pub const FILES: &[(&str, &[u8], bool)] = &[
    (
        "codex.repo.yaml",
        include_bytes!("../../../codex.repo.yaml"),
        false,
    ),
    (
        "README.codex.md",
        include_bytes!("../../../README.codex.md"),
        false,
    ),
    (
        "handlers/index.yml",
        include_bytes!("../../../handlers/index.yml"),
        false,
    ),
    (
        "handlers/echo.sh",
        include_bytes!("../../../handlers/echo.sh"),
        true,
    ),
    (
        "handlers/deploy.sh",
        include_bytes!("../../../handlers/deploy.sh"),
        true,
    ),
    (
        "handlers/backup.py",
        include_bytes!("../../../handlers/backup.py"),
        true,
    ),
    (
        "containers/build-images.sh",
        include_bytes!("../../../containers/build-images.sh"),
        true,
    ),
    (
        "containers/deploy/Dockerfile",
        include_bytes!("../../../containers/deploy/Dockerfile"),
        false,
    ),
    (
        "containers/deploy/rollout",
        include_bytes!("../../../containers/deploy/rollout"),
        true,
    ),
    ("requests/.gitkeep", b"", false),
    ("processed/.gitkeep", b"", false),
    ("logs/.gitkeep", b"", false),
];

/// The template as files to commit.
pub fn seed_files() -> Vec<codex_runner::git::seed::SeedFile<'static>> {
    FILES
        .iter()
        .map(
            |(path, bytes, executable)| codex_runner::git::seed::SeedFile {
                path,
                bytes,
                executable: *executable,
            },
        )
        .collect()
}
