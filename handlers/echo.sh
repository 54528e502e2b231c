#!/bin/sh
# echo: prints the request's message. `sleep` and `exit` params make it a test double for
# long and failing handlers. Scalar params arrive as CODEX_PARAM_<NAME>; the whole request
# is at $CODEX_REQUEST (/codex/request.json).
set -eu
echo "request ${CODEX_REQUEST_ID} (${CODEX_KIND}, attempt ${CODEX_ATTEMPT}) from ${CODEX_COMMIT}"
echo "message: ${CODEX_PARAM_MESSAGE}"
if [ -n "${CODEX_PARAM_SLEEP:-}" ]; then
  echo "sleeping ${CODEX_PARAM_SLEEP}s"
  sleep "${CODEX_PARAM_SLEEP}"
fi
if [ -n "${CODEX_PARAM_EXIT:-}" ] && [ "${CODEX_PARAM_EXIT}" != 0 ]; then
  echo "failing on purpose with exit code ${CODEX_PARAM_EXIT}" >&2
  exit "${CODEX_PARAM_EXIT}"
fi
echo "done"
