#!/usr/bin/env bash
# Build the Debian package: the binary, its manual pages and shell completions, README.
#
#   scripts/package.sh                 builds the release binary, writes dist/codex-runner_<v>_<arch>.deb
#   BIN=path OUT=dir scripts/package.sh   packages another build (the tests package the debug one)
#
# The package installs the program only: `codex-runner register` then `sudo codex-runner
# install` make a service of it, as README says. Depends are read from the binary's
# shared libraries (dpkg -S), so they follow what the build links.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=${OUT:-dist}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/codex-runner
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/codex-runner_${version}_$arch
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" \
  "$root/usr/share/doc/codex-runner" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$BIN" "$root/usr/bin/codex-runner"
strip --strip-debug "$root/usr/bin/codex-runner"
bin=$root/usr/bin/codex-runner

"$bin" man --dir "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
"$bin" completions bash >"$root/usr/share/bash-completion/completions/codex-runner"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_codex-runner"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/codex-runner.fish"
install -m 0644 README.md "$root/usr/share/doc/codex-runner/README.md"
cat >"$root/usr/share/doc/codex-runner/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: codex-runner
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

# Depends: the package of each shared library the binary links.
depends=$(ldd "$bin" | awk '/=>/ {print $3}' | while read -r lib; do
  dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
size=$(du -sk "$root/usr" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: codex-runner
Version: $version
Architecture: $arch
Maintainer: codex-runner maintainers <codex-runner@localhost>
Installed-Size: $size
Depends: $depends
Recommends: docker.io | docker-ce, git, openssh-client
Section: admin
Priority: optional
Description: self-hosted runner for Git-driven operations
 Requests merged to a repository's mainline are validated against its
 contract, routed to a handler, run in a hardened Docker container, and
 recorded back on the branch; check runs show each result on the forge.
EOF

mkdir -p "$out"
deb=$out/codex-runner_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
