#!/usr/bin/env bash
# The action's first step: put codex-runner on the PATH of the steps after it. From the binary
# input, else the release download (checked against the sha256 input when given), else ask the
# next steps to build it from this action's own source (build=true).
set -euo pipefail
dir="$RUNNER_TEMP/codex-runner/bin"
mkdir -p "$dir"
bin="$dir/codex-runner"

if [ -n "${CODEX_BINARY:-}" ]; then
  [ -x "$CODEX_BINARY" ] || { echo "::error title=codex-runner::the binary input ($CODEX_BINARY) is not an executable file"; exit 1; }
  install -m 0755 "$CODEX_BINARY" "$bin"
else
  url=${CODEX_DOWNLOAD_URL:-}
  if [ -z "$url" ] && [ -n "${CODEX_ACTION_REPOSITORY:-}" ]; then
    url="https://github.com/$CODEX_ACTION_REPOSITORY/releases/download/v{version}/codex-runner-{version}-x86_64-linux"
  fi
  url=${url//\{version\}/${CODEX_VERSION:-}}
  if [ -n "$url" ] && [ "$(uname -sm)" = "Linux x86_64" ] &&
    curl -fsSL --retry 3 --connect-timeout 10 -o "$bin.part" "$url"; then
    if [ -n "${CODEX_SHA256:-}" ]; then
      echo "${CODEX_SHA256}  $bin.part" | sha256sum --check --quiet - || {
        echo "::error title=codex-runner::$url does not have the SHA-256 the sha256 input names"
        rm -f "$bin.part"
        exit 1
      }
    fi
    chmod 0755 "$bin.part"
    mv "$bin.part" "$bin"
  else
    rm -f "$bin.part"
    echo "::notice title=codex-runner::no release binary to download (${url:-no download-url}); building codex-runner ${CODEX_VERSION:-} from source"
    echo "build=true" >>"$GITHUB_OUTPUT"
    exit 0
  fi
fi
"$bin" --version
echo "$dir" >>"$GITHUB_PATH"
echo "path=$bin" >>"$GITHUB_OUTPUT"
