#!/usr/bin/env bash
# Start a single-node Kubernetes 1.20 cluster on loopback from binaries made by build.sh.
#   usage: up.sh [BIN_DIR] [STATE_DIR]   (defaults: $CODEX_RUNNER_K8S/bin, else
#          /var/cache/codex-runner/k8s-1.20/bin; /var/lib/k8s-local)
# Every listener is 127.0.0.1 (etcd 2379/2380, apiserver 6443, kcm 10257, scheduler 10259,
# kubelet 10250/10248). Pods run in Docker through the kubelet's built-in dockershim with the CNI
# network plugin and a loopback-only network: a pod gets its own network namespace holding only
# `lo` (like `docker run --network none`), no pod IP and no route off the host. There is no
# kube-proxy and no cluster DNS (Service ClusterIPs do not route).
# Needs containernetworking-plugins (CNI_BIN, default /usr/lib/cni, must hold `loopback`).
# Prints the admin kubeconfig path on the last line of stdout. Stop with down.sh.
set -euo pipefail
BIN=${1:-${CODEX_RUNNER_K8S:-/var/cache/codex-runner/k8s-1.20}/bin}
STATE=${2:-/var/lib/k8s-local}
CNI_BIN=${CNI_BIN:-/usr/lib/cni}
NODE=127.0.0.1   # node name; an IP as hostname-override becomes the node's InternalIP unvalidated
PKI=$STATE/pki LOG=$STATE/logs RUN=$STATE/run
mkdir -p "$PKI" "$LOG" "$RUN" "$STATE/etcd" "$STATE/kubelet"
chmod 700 "$STATE"
log() { echo "[up $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  command -v "$BIN/$b" >/dev/null || command -v "$b" >/dev/null || die "missing binary $b"
done
ETCD=$(command -v "$BIN/etcd" || command -v etcd)
[ -x "$CNI_BIN/loopback" ] ||
  die "no CNI loopback plugin in $CNI_BIN (apt-get install containernetworking-plugins)"
command -v nsenter >/dev/null || die "missing nsenter (util-linux), needed by the kubelet's CNI"
docker info >/dev/null 2>&1 || die "docker daemon not reachable on /var/run/docker.sock"
[ "$(docker info -f '{{.CgroupDriver}}')" = cgroupfs ] || die "docker cgroup driver is not cgroupfs"

# --- PKI and credentials (generated once, reused on restart) ---
cert() { # name CN O ext
  [ -s "$PKI/$1.crt" ] && return
  openssl genrsa -out "$PKI/$1.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$1.key" -subj "/CN=$2${3:+/O=$3}" -out "$PKI/$1.csr"
  printf '%s\n' "$4" > "$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
}
if [ ! -s "$PKI/ca.crt" ]; then
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=k8s-local-ca -days 3650 -out "$PKI/ca.crt"
fi
SANS="subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver kube-apiserver "" "$SANS
extendedKeyUsage=serverAuth"
cert kubelet-serving "$NODE" "" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
# apiserver -> kubelet (logs/exec); system:masters passes the kubelet's webhook authorizer
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "extendedKeyUsage=clientAuth"
[ -s "$PKI/sa.key" ] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
if [ ! -s "$PKI/tokens.csv" ]; then
  t() { openssl rand -hex 16; }
  { echo "$(t),admin,admin,\"system:masters\""
    echo "$(t),system:node:$NODE,kubelet,\"system:nodes\""
    echo "$(t),system:kube-controller-manager,kcm"
    echo "$(t),system:kube-scheduler,scheduler"; } > "$PKI/tokens.csv"
fi
chmod 600 "$PKI"/*.key "$PKI/tokens.csv"
kubeconfig() { # file user
  local tok; tok=$(awk -F, -v u="$2" '$2==u{print $1}' "$PKI/tokens.csv")
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {token: "$tok"}
contexts:
- name: local
  context: {cluster: local, user: "$2"}
current-context: local
KC
  chmod 600 "$1"
}
kubeconfig "$STATE/admin.kubeconfig" admin
kubeconfig "$STATE/kcm.kubeconfig" system:kube-controller-manager
kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler
kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE"

# --- pause (sandbox) image: built locally, nothing is pulled ---
if ! docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1; then
  [ -x "$BIN/pause" ] || die "no k8s.gcr.io/pause:3.2 image and no $BIN/pause to build it"
  d=$(mktemp -d); cp "$BIN/pause" "$d/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$d/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t k8s.gcr.io/pause:3.2 "$d" >/dev/null; rm -rf "$d"
fi

# --- start one component in the background, logging to $LOG/<name>.log ---
start() { # name cmd...
  local n=$1; shift
  if [ -s "$RUN/$n.pid" ] && kill -0 "$(cat "$RUN/$n.pid")" 2>/dev/null; then
    # A binary rebuilt since (build.sh applied a new patch) replaces the running one.
    if [ "$1" -nt "$RUN/$n.pid" ]; then
      log "$n was rebuilt: restarting it"; kill "$(cat "$RUN/$n.pid")"
      for _ in $(seq 40); do kill -0 "$(cat "$RUN/$n.pid")" 2>/dev/null || break; sleep 0.25; done
    else
      log "$n already running"; return
    fi
  fi
  setsid "$@" >>"$LOG/$n.log" 2>&1 < /dev/null & echo $! > "$RUN/$n.pid"
}
wait_for() { # what seconds cmd...
  local w=$1 s=$2; shift 2
  for _ in $(seq $((s * 2))); do "$@" >/dev/null 2>&1 && { log "$w ready"; return; }; sleep 0.5; done
  die "$w not ready after ${s}s; see $LOG"
}
ADMIN=(kubectl --kubeconfig "$STATE/admin.kubeconfig")
T0=$(date +%s)

start etcd "$ETCD" --name local --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster local=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd 30 curl -fsS http://127.0.0.1:2379/health

start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=127.0.0.1 --secure-port=6443 --insecure-port=0 \
  --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-cluster-ip-range=10.0.0.0/24 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP,Hostname \
  --profiling=false
# --endpoint-reconciler-type=none: Endpoints may not hold a loopback IP, so skip the
# "kubernetes" service endpoint (in-cluster clients must use the node address instead).
wait_for kube-apiserver 90 "${ADMIN[@]}" get --raw /readyz

start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$STATE/kcm.kubeconfig" --authentication-kubeconfig="$STATE/kcm.kubeconfig" \
  --authorization-kubeconfig="$STATE/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true --profiling=false \
  --flex-volume-plugin-dir="$STATE/kcm-volume-plugins"
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$STATE/scheduler.kubeconfig" --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false --profiling=false

# Without CAP_SYS_RESOURCE (some sandboxes/VMs) root cannot lower oom_score_adj and runc fails
# every pod sandbox (dockershim asks -998). The patched kubelet then clamps at 0 (build.sh patch).
OOM_ADJ=-999
if ! sh -c 'echo -1 > /proc/self/oom_score_adj' 2>/dev/null; then
  log "cannot lower oom_score_adj here; clamping kubelet/pod OOM adjustments at 0"
  export KUBELET_OOM_SCORE_ADJ_FLOOR=0 OOM_ADJ=0
fi
# The kubelet rewrites these host sysctls at start (vm.overcommit_memory=1, kernel.panic=10,
# kernel.panic_on_oops=1, keys quotas); remember the originals once so down.sh can restore them.
SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
[ -s "$RUN/sysctl.saved" ] || for k in $SYSCTLS; do echo "$k=$(sysctl -n "$k")"; done > "$RUN/sysctl.saved"
# --- pod network: CNI with the loopback plugin only ---
# With --network-plugin=cni dockershim creates every sandbox with Docker's NetworkMode "none"
# (a fresh netns holding only lo) and then runs its built-in loopback network plus the default
# network below, which is loopback again: no eth0, no address but 127.0.0.1 (Docker disables
# IPv6 there), no routes but loopback's, nothing on the host side (no veth, bridge, IPAM state or
# iptables rules). The kubelet then reports no pod IP (status.podIP is empty; it logs "failed to
# read pod IP from plugin/docker" a few times per sandbox start). Upstream's kubelet would then
# recreate every sandbox (killing its running containers) about a second after it starts, for
# having no IP: the patched kubelet skips that with KUBELET_ALLOW_POD_WITHOUT_IP=1 (build.sh
# patch pod-without-ip.patch). The
# conf dir holds only this file: the kubelet uses the first valid one in lexical order (and
# rereads the dir every few seconds, hence the rename when a kubelet is already running).
export KUBELET_ALLOW_POD_WITHOUT_IP=1
CNI_CONF=$STATE/cni/10-loopback-only.conf
mkdir -p "$STATE/cni" "$STATE/cni-cache"
find "$STATE/cni" -mindepth 1 ! -path "$CNI_CONF" -exec rm -rf {} +
echo '{"cniVersion": "0.4.0", "name": "loopback-only", "type": "loopback"}' > "$CNI_CONF.tmp"
mv -f "$CNI_CONF.tmp" "$CNI_CONF"
# kubelet: dockershim, cgroupfs, CNI loopback-only network (above), no iptables chains,
# image GC effectively off (it would otherwise delete unused images that are not ours), and the
# API rate limits kubelets have by default since 1.27 (50/100; 1.20's 5/10 held pod status
# updates back by seconds once a few dozen pods had come and gone).
start kubelet "$BIN/kubelet" --kubeconfig="$STATE/kubelet.kubeconfig" \
  --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
  --cgroup-driver=cgroupfs --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
  --hostname-override="$NODE" --address=127.0.0.1 --healthz-bind-address=127.0.0.1 \
  --read-only-port=0 --port=10250 \
  --tls-cert-file="$PKI/kubelet-serving.crt" --tls-private-key-file="$PKI/kubelet-serving.key" \
  --client-ca-file="$PKI/ca.crt" --anonymous-auth=false --authorization-mode=Webhook \
  --authentication-token-webhook \
  --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" \
  --experimental-dockershim-root-directory="$STATE/dockershim" \
  --network-plugin=cni --cni-bin-dir="$CNI_BIN" --cni-conf-dir="$STATE/cni" \
  --cni-cache-dir="$STATE/cni-cache" \
  --volume-plugin-dir="$STATE/kubelet/volume-plugins" \
  --fail-swap-on=false --make-iptables-util-chains=false \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --eviction-hard='memory.available<100Mi,nodefs.available<2%,imagefs.available<2%' \
  --cluster-domain=cluster.local --resolv-conf=/etc/resolv.conf \
  --rotate-certificates=false --oom-score-adj=$OOM_ADJ \
  --kube-api-qps=50 --kube-api-burst=100
wait_for kube-controller-manager 60 curl -fsSk https://127.0.0.1:10257/healthz
wait_for kube-scheduler 60 curl -fsSk https://127.0.0.1:10259/healthz
wait_for kubelet 60 curl -fsS http://127.0.0.1:10248/healthz
wait_for "node $NODE Ready" 90 "${ADMIN[@]}" wait --for=condition=Ready "node/$NODE" --timeout=2s
wait_for "default serviceaccount" 60 "${ADMIN[@]}" get serviceaccount default -n default
log "cluster up in $(( $(date +%s) - T0 ))s; logs in $LOG"
echo "$STATE/admin.kubeconfig"
