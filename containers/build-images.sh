#!/usr/bin/env bash
# Builds the base images the example handlers use, from local Debian packages only:
# no container registry is contacted. Idempotent: an image that exists is kept unless --force.
#
#   codex-runner/busybox:1   FROM scratch + Debian's busybox-static (a few MB, starts in ms)
#   codex-runner/python:3    debootstrap --variant=minbase bookworm + python3
#   codex-runner/systemd:1   debootstrap --variant=minbase bookworm + systemd: a real service
#                            manager for the test of `codex-runner install` (not a handler image)
#
# Images named by `build:` entries in handlers/index.yml (containers/<dir>/Dockerfile) are
# built by the runner itself through the Docker API; they start FROM these bases.
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1
mirror="${CODEX_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^URIs: *http[^ ]*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')
  [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +http[^ ]*debian/? ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
fi

have() { docker image inspect "$1" >/dev/null 2>&1; }
need_pkg() {
  dpkg -s "$1" >/dev/null 2>&1 && return 0
  echo "installing $1 from Debian" >&2
  apt-get install -y -q "$1" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$1" >/dev/null; }
}

passwd_files() { # $1 = root dir
  mkdir -p "$1/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
}

if [ $force = 1 ] || ! have codex-runner/busybox:1; then
  need_pkg busybox-static
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/codex"
  cp /bin/busybox "$root/bin/busybox"
  # The image has no libc: only the static build runs in it.
  if ldd "$root/bin/busybox" 2>&1 | grep -q "=>"; then
    echo "/bin/busybox is dynamically linked; install busybox-static" >&2
    exit 1
  fi
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  passwd_files "$root"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - codex-runner/busybox:1 >/dev/null
  rm -rf "$root"; trap - EXIT
  echo "built codex-runner/busybox:1"
fi

if [ $force = 1 ] || ! have codex-runner/python:3; then
  need_pkg debootstrap
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >/tmp/codex-debootstrap.log 2>&1 \
    || { tail -20 /tmp/codex-debootstrap.log >&2; exit 1; }
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["/bin/sh"]' - codex-runner/python:3 >/dev/null
  rm -rf "$root"; trap - EXIT
  echo "built codex-runner/python:3"
fi

if [ $force = 1 ] || ! have codex-runner/systemd:1; then
  need_pkg debootstrap
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" "$mirror" >/tmp/codex-debootstrap.log 2>&1 \
    || { tail -20 /tmp/codex-debootstrap.log >&2; exit 1; }
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' -c 'CMD ["/lib/systemd/systemd"]' - codex-runner/systemd:1 >/dev/null
  rm -rf "$root"; trap - EXIT
  echo "built codex-runner/systemd:1"
fi
