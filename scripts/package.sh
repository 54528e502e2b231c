#!/usr/bin/env bash
# Build the Debian package with cargo-deb: the binary, the systemd unit (not enabled) and the
# user it runs as (sysusers.d), manual pages, shell completions, README.
#
#   scripts/package.sh                    builds the release binary, writes dist/codex-runner_<v>_<arch>.deb
#   BIN=path OUT=dir scripts/package.sh   packages another build (the tests package the debug one)
#
# What goes in is `[package.metadata.deb]` in Cargo.toml; the unit is debian/codex-runner.service
# (what `codex-runner install` writes for the default config, kept so by a unit test). Depends
# are read from the libraries the binary links (dpkg-shlibdeps). cargo-deb is installed when
# missing (`cargo install cargo-deb`, from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi
out=${OUT:-dist}
mkdir -p "$out"

if [ -n "${BIN:-}" ]; then
  # cargo-deb packages target/release: give it a target directory of its own holding BIN.
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
  install -d "$target/release"
  install -m 0755 "$BIN" "$target/release/codex-runner"
  export CARGO_TARGET_DIR=$target
else
  cargo build --release --quiet
  target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
assets=$target/release/package
rm -rf "$assets"
install -d "$assets/man" "$assets/completions"
bin=$target/release/codex-runner
"$bin" man --dir "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/codex-runner.bash"
"$bin" completions zsh >"$assets/completions/_codex-runner"
"$bin" completions fish >"$assets/completions/codex-runner.fish"

cargo deb --no-build --strip --quiet --output "$out"
