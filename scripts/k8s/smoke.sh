#!/usr/bin/env bash
# End-to-end check of a cluster started by up.sh: build a FROM-scratch busybox image locally,
# run a locked-down batch/v1 Job (non-root, read-only rootfs, no capabilities, limits,
# imagePullPolicy: Never), print its logs, delete it. Exit status 0 only if the Job succeeded.
#   usage: smoke.sh [KUBECONFIG]   (default /var/lib/k8s-local/admin.kubeconfig)
set -euo pipefail
export KUBECONFIG=${1:-/var/lib/k8s-local/admin.kubeconfig}
. "$(dirname "${BASH_SOURCE[0]}")/job.sh"
locked_job smoke <<'SH'
echo hello; id
SH
t0=$(date +%s.%N)
rc=0; kubectl wait --for=condition=complete job/smoke --timeout=90s || rc=1
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "job finished in %.1fs\n", b-a}'
kubectl logs job/smoke || true
[ $rc = 0 ] || kubectl describe job/smoke
kubectl delete job smoke --wait=false >/dev/null
exit $rc
