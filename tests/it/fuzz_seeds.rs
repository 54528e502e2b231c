//! Every committed fuzz seed through the fuzz targets' entry points, on the stable toolchain:
//! the seed corpus is a regression suite even where cargo-fuzz is not installed
//! (`scripts/fuzz.sh` runs the targets themselves).

use crate::common::root;

fn seeds(dirs: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && !path.ends_with(".gitkeep") {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[test]
fn request_seeds_parse_or_are_rejected_without_panicking() {
    let all = seeds(&["tests/corpus/requests", "fuzz/corpus/request"]);
    assert!(all.len() >= 50, "{} request seeds", all.len());
    for (path, bytes) in &all {
        let caught = std::panic::catch_unwind(|| codex_runner::fuzzing::request(bytes));
        assert!(caught.is_ok(), "the request target fails on {path}");
    }
}

#[test]
fn webhook_seeds_are_read_without_panicking() {
    let all = seeds(&["fuzz/corpus/webhook"]);
    assert!(all.len() >= 10, "{} webhook seeds", all.len());
    for (path, bytes) in &all {
        let caught = std::panic::catch_unwind(|| codex_runner::fuzzing::webhook(bytes));
        assert!(caught.is_ok(), "the webhook target fails on {path}");
    }
}
