#!/usr/bin/env bash
# Check that pods of a cluster started by up.sh have no network but loopback: run a locked-down
# Job (same FROM-scratch busybox image as smoke.sh) that prints its interfaces, addresses and
# routes and makes one HTTP request to 10.0.0.1 (the `kubernetes` Service ClusterIP, which
# nothing serves here) under `timeout 2` (Debian 12's busybox-static wget has no -T: it
# segfaults). Exit status 0 only if the Job completed, its logs were readable, the pod saw `lo`
# alone, had no IPv4 route, the probe failed with "Network is unreachable" (nothing was sent),
# the pod has no podIP and its Docker sandbox has NetworkMode "none". Sends no other traffic.
#   usage: netcheck.sh [KUBECONFIG]   (default /var/lib/k8s-local/admin.kubeconfig)
set -euo pipefail
export KUBECONFIG=${1:-/var/lib/k8s-local/admin.kubeconfig}
. "$(dirname "${BASH_SOURCE[0]}")/job.sh"
locked_job netcheck <<'SH'
echo "ifaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "--- cat /proc/net/route"; cat /proc/net/route
echo "--- ip addr"; ip addr
echo "--- ip route show table all"; ip route show table all
echo "--- ipv6: disable_ipv6=$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6) addrs:"
cat /proc/net/if_inet6
if out=$(timeout 2 wget -O /dev/null http://10.0.0.1/ 2>&1); then echo "probe: CONNECTED"
else echo "probe: failed ($?): $out" | tr '\n' ' '; echo; fi
SH
rc=0; kubectl wait --for=condition=complete job/netcheck --timeout=90s || rc=1
logs=$(kubectl logs job/netcheck) || rc=1
printf '%s\n' "$logs"
fail() { echo "netcheck: FAIL: $*" >&2; rc=1; }
pod=$(kubectl get pod -l job-name=netcheck -o jsonpath='{.items[0].metadata.name}')
ip=$(kubectl get pod "$pod" -o jsonpath='{.status.podIP}')
sb=$(docker ps -aq --filter label=io.kubernetes.docker.type=podsandbox \
      --filter "label=io.kubernetes.pod.name=$pod" | head -1)
mode=$([ -n "$sb" ] && docker inspect -f '{{.HostConfig.NetworkMode}}' "$sb" || echo "?")
echo "--- pod $pod: podIP='$ip' sandbox=${sb:-?} NetworkMode=$mode"
grep -qx 'ifaces: lo ' <<<"$logs" || fail "pod sees interfaces other than lo"
[ "$(sed -n '/^--- cat \/proc\/net\/route$/,/^---/p' <<<"$logs" | grep -vc '^---\|^Iface')" = 0 ] \
  || fail "pod has IPv4 routes"
grep -q '^probe: failed.*Network is unreachable' <<<"$logs" || fail "10.0.0.1 was not unreachable"
[ -z "$ip" ] || fail "pod has IP $ip"
[ "$mode" = none ] || fail "sandbox NetworkMode is '$mode', not none"
if [ $rc = 0 ]; then echo "netcheck: OK (only lo, no routes, probe unreachable, no pod IP)"
else kubectl describe job/netcheck; fi
kubectl delete job netcheck --wait=false >/dev/null
exit $rc
