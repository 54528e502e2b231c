#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (1.20, with dockershim)
# and the pause binary from Debian bookworm's `kubernetes` source package; etcd comes from
# Debian's etcd-server. Idempotent: finished binaries are kept, a rerun only fills gaps.
#   usage: build.sh [PREFIX]   (default $CODEX_RUNNER_K8S, else /var/cache/codex-runner/k8s-1.20;
#                               binaries land in PREFIX/bin)
#   env:   SRC_DIR  where the source is unpacked (default PREFIX/src)
#          DEB_SRC  a directory already holding kubernetes_*.dsc/.orig.tar.gz/.debian.tar.xz
# Needs root and the Debian archive (apt); nothing else is downloaded.
set -euo pipefail
# Where this script is, before any cd (it may be run by a relative path).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${1:-${CODEX_RUNNER_K8S:-/var/cache/codex-runner/k8s-1.20}}
BIN=$PREFIX/bin
SRC_DIR=${SRC_DIR:-$PREFIX/src}
WHAT="kube-apiserver kube-controller-manager kube-scheduler kubelet"
log() { echo "[build $(date +%T)] $*" >&2; }
mkdir -p "$BIN" "$SRC_DIR"

# golang-go is 1.19 on bookworm (k8s 1.20 asks for >=1.15; 1.19 works with the reflect2 fix
# below). reflect2-dev supplies reflect2 1.0.2; etcd-server supplies etcd 3.4.
PKGS="golang-go rsync jq gcc libc6-dev dpkg-dev patch xz-utils etcd-server docker.io openssl curl
      golang-github-modern-go-reflect2-dev containernetworking-plugins util-linux kubectl"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
# docker may come from elsewhere (docker-ce, a static binary); only install it when absent
command -v docker >/dev/null && missing=$(echo "$missing" | grep -vx docker.io || true)
if [ -n "$missing" ]; then
  log "installing: $(echo $missing)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# --- source: Debian's kubernetes 1.20.5+really1.20.2 (full vendor/ tree, Debian patches) ---
K=$(ls -d "$SRC_DIR"/kubernetes-1.20*/ 2>/dev/null | head -1 || true)
if [ -z "$K" ] || [ ! -f "$K/vendor/modules.txt" ]; then
  D=${DEB_SRC:-$SRC_DIR/deb}; mkdir -p "$D"
  if ! ls "$D"/kubernetes_*.dsc >/dev/null 2>&1; then
    # throwaway deb-src list so the machine's apt configuration stays untouched
    L=$(mktemp -d)
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$L/src.list"
    APT=(-o Dir::Etc::SourceList="$L/src.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$L/lists" -o Dir::Cache="$L/cache")
    mkdir -p "$L/lists/partial" "$L/cache/archives/partial"
    apt-get "${APT[@]}" update -qq
    (cd "$D" && apt-get "${APT[@]}" source --download-only kubernetes)
    rm -rf "$L"
  fi
  rm -rf "$SRC_DIR"/kubernetes-1.20*
  dpkg-source --no-check -x "$(ls "$D"/kubernetes_*.dsc | head -1)" "$SRC_DIR/kubernetes-1.20" >/dev/null
  K=$SRC_DIR/kubernetes-1.20/
fi
cd "$K"

# Go >= 1.18 crashes json-iterator with reflect2 1.0.1 (vendored); swap in Debian's 1.0.2.
# k8s 1.20's build runs in GOPATH mode (GO111MODULE=off), so go.mod/modules.txt are cosmetic.
R=vendor/github.com/modern-go/reflect2
if [ ! -f $R/go_above_118.go ]; then
  log "replacing vendored reflect2 1.0.1 with 1.0.2"
  rm -f $R/*.go $R/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s $R/
  sed -i 's#modern-go/reflect2 v1.0.1#modern-go/reflect2 v1.0.2#g' go.mod vendor/modules.txt
fi

# Local patches (patches/ next to this script), applied once each; see the patch headers.
for p in "$HERE"/patches/*.patch; do
  [ -e "$p" ] || continue
  if patch -p1 -R --dry-run -s -f < "$p" >/dev/null 2>&1; then continue; fi  # already applied
  log "applying $(basename "$p")"; patch -p1 -s -f < "$p"
  rm -f "$BIN/kubelet"   # built before the patch: rebuild
done

# --- Go binaries (hack/ build: code generation, version ldflags, CGO_ENABLED=0) ---
todo=""; for b in $WHAT; do [ -x "$BIN/$b" ] || todo="$todo cmd/$b"; done
if [ -n "$todo" ]; then
  log "building:$todo (takes ~15-25 min on 2 cores)"
  HOME=${HOME:-/root} CGO_ENABLED=0 KUBE_VERBOSE=1 make WHAT="${todo# }"
  for b in $todo; do install -m 0755 "_output/bin/${b#cmd/}" "$BIN/"; done
fi

# --- pause: the pod sandbox process; up.sh wraps it into k8s.gcr.io/pause:3.2 ---
[ -x "$BIN/pause" ] || { gcc -Os -static -DVERSION=v3.2 -o "$BIN/pause" build/pause/linux/pause.c; strip "$BIN/pause"; }
ln -sf "$(command -v etcd)" "$BIN/etcd"

"$BIN/kube-apiserver" --version; "$BIN/kubelet" --version; etcd --version | head -1
du -shL "$BIN"
