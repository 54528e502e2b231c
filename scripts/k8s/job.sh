# Sourced by smoke.sh and netcheck.sh: the FROM-scratch busybox image their Jobs run (built
# locally with --network none; this project never uses the bridge network), and a locked-down
# batch/v1 Job around a shell script.
IMG=k8stest/busybox:1

busybox_image() {
  docker image inspect "$IMG" >/dev/null 2>&1 && return
  local d
  d=$(mktemp -d); cp "$(command -v busybox)" "$d/busybox"   # Debian busybox-static
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nCMD ["/bin/sh"]\n' > "$d/Dockerfile"
  DOCKER_BUILDKIT=0 docker build --network none -q -t "$IMG" "$d" >/dev/null; rm -rf "$d"
}

# locked_job NAME: (re)create Job NAME running the shell script on stdin as uid 65534, with a
# read-only root, no capabilities, no service-account token, limits, imagePullPolicy: Never.
locked_job() {
  local name=$1 script
  script=$(sed 's/^/          /')
  busybox_image
  kubectl delete job "$name" --ignore-not-found --wait=true >/dev/null
  kubectl apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
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
        command:
        - sh
        - -c
        - |
$script
        securityContext:
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {drop: ["ALL"]}
        resources: {limits: {cpu: 200m, memory: 64Mi}}
YAML
}
