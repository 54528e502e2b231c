#!/usr/bin/env bash
# End-to-end check of a cluster started by up.sh: build a FROM-scratch busybox image locally,
# run a locked-down batch/v1 Job (non-root, read-only rootfs, no capabilities, limits,
# imagePullPolicy: Never), print its logs, delete it. Exit status 0 only if the Job succeeded.
#   usage: smoke.sh [KUBECONFIG]   (default /var/lib/k8s-local/admin.kubeconfig)
set -euo pipefail
export KUBECONFIG=${1:-/var/lib/k8s-local/admin.kubeconfig}
IMG=k8stest/busybox:1
if ! docker image inspect "$IMG" >/dev/null 2>&1; then
  d=$(mktemp -d); cp "$(command -v busybox)" "$d/busybox"   # Debian busybox-static
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nCMD ["/bin/sh"]\n' > "$d/Dockerfile"
  DOCKER_BUILDKIT=0 docker build --network none -q -t "$IMG" "$d" >/dev/null; rm -rf "$d"
fi
kubectl delete job smoke --ignore-not-found --wait=true >/dev/null
kubectl apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: smoke}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 60
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsUser: 65534, runAsGroup: 65534, runAsNonRoot: true}
      containers:
      - name: main
        image: $IMG
        imagePullPolicy: Never
        command: ["sh", "-c", "echo hello; id"]
        securityContext:
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {drop: ["ALL"]}
        resources: {limits: {cpu: 200m, memory: 64Mi}}
YAML
t0=$(date +%s.%N)
rc=0; kubectl wait --for=condition=complete job/smoke --timeout=90s || rc=1
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "job finished in %.1fs\n", b-a}'
kubectl logs job/smoke || true
[ $rc = 0 ] || kubectl describe job/smoke
kubectl delete job smoke --wait=false >/dev/null
exit $rc
