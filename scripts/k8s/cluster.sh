#!/usr/bin/env bash
# Throwaway Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.
# No kubelet, no scheduler: Pods are created but stay Pending.
#
#   scripts/k8s/cluster.sh start DIR    start, everything under DIR; wait until ready; writes
#                                       DIR/kubeconfig, DIR/env, DIR/run/*.pid, DIR/logs/*.log
#   scripts/k8s/cluster.sh stop DIR     stop all three (TERM, then KILL after 10 s)
#   scripts/k8s/cluster.sh status DIR   exit 0 if all three are running
#
# Environment:
#   PROPELLER_K8S_CACHE          where build-binaries.sh put bin/ (default /var/cache/propeller-k8s)
#   PROPELLER_K8S_TIMEOUT        seconds to wait for readiness (default 60, each of /readyz and the
#                                default service account)
#   PROPELLER_K8S_CONTROLLERS    --controllers for kube-controller-manager
#   PROPELLER_K8S_OWNER_PID      if set, a watcher stops the cluster when that process exits
# Binaries come from build-binaries.sh (run it first); etcd from Debian's etcd-server.
set -euo pipefail

CACHE="${PROPELLER_K8S_CACHE:-/var/cache/propeller-k8s}"
BIN="$CACHE/bin"
KUBECTL="$BIN/kubectl"
TIMEOUT="${PROPELLER_K8S_TIMEOUT:-60}"
CONTROLLERS="${PROPELLER_K8S_CONTROLLERS:-namespace,garbagecollector,serviceaccount,serviceaccount-token,deployment,replicaset,statefulset,daemonset,job,cronjob,endpoint,endpointslice,resourcequota,podgc,disruption}"
COMPONENTS=(kube-controller-manager kube-apiserver etcd)   # stop order
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

say() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

usage() { sed -n '2,9p' "$SELF" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD="$1"
case "$CMD" in start|stop|status) ;; *) usage ;; esac
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"
RUN="$DIR/run"
LOGS="$DIR/logs"
PKI="$DIR/pki"

# pid of a component if it is alive and really is that binary, else empty
alive_pid() {
  local name="$1" pid exe
  [ -f "$RUN/$name.pid" ] || return 0
  pid="$(cat "$RUN/$name.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  [ "$(basename "${exe% (deleted)}")" = "$name" ] && echo "$pid"
  return 0
}

# While starting: gone only when the process itself is (a zombie counts as gone). The exe name
# is not checked here: between setsid's fork and exec it is still 'setsid', and on a busy machine
# that window is long enough to be mistaken for an exit.
start_gone() {
  local pid state
  pid="$(cat "$RUN/$1.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
  [ -z "$state" ] || [ "$state" = Z ]
}

stop_all() {
  local name pid pids=() i
  if [ -f "$RUN/watcher.pid" ]; then
    pid="$(cat "$RUN/watcher.pid")"
    [ "$pid" != "${PROPELLER_K8S_WATCHER_SELF:-}" ] && kill "$pid" 2>/dev/null || true
    rm -f "$RUN/watcher.pid"
  fi
  for name in "${COMPONENTS[@]}"; do
    pid="$(alive_pid "$name")"
    if [ -n "$pid" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for i in $(seq 1 100); do
    local left=0
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && die "process $pid would not die"
  done
  rm -f "$RUN"/*.pid
  echo "${#pids[@]}"
}

# --- free loopback ports -------------------------------------------------------
# Random ports in 20000-32767 (below the ephemeral range), not listening now, and not handed out
# to another start in the last 120 s (a registry shared by parallel starts, under a lock).
listening_ports() {
  local f
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] && awk 'NR>1 && $4=="0A" { n=split($2,a,":"); print a[n] }' "$f"
  done
}
pick_ports() { # N -> prints N ports
  local n="$1" reg="${TMPDIR:-/tmp}/propeller-k8s-ports" now chosen=() p hex
  now="$(date +%s)"
  exec 8>"$reg.lock"
  flock 8
  touch "$reg"
  local busy
  busy=" $(listening_ports | tr '\n' ' ') $(awk -v now="$now" '$1 > now-120 { printf "%X ", $2 }' "$reg") "
  while [ ${#chosen[@]} -lt "$n" ]; do
    p=$(( 20000 + RANDOM % 12768 ))
    hex="$(printf '%04X' "$p")"
    case "$busy" in *" $hex "*) continue ;; esac
    busy="$busy$hex "
    chosen+=("$p")
  done
  { awk -v now="$now" '$1 > now-120' "$reg"; for p in "${chosen[@]}"; do echo "$now $p"; done; } >"$reg.new"
  mv "$reg.new" "$reg"
  flock -u 8
  exec 8>&-
  echo "${chosen[@]}"
}

# http GET on loopback without curl: prints the body
http_get() { # port path
  local body
  exec 7<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&7
  body="$(timeout 5 cat <&7)" || true
  exec 7>&-
  echo "${body##*$'\r\n\r\n'}"
}

fail_start() { # reason, component whose log to quote; stops whatever was started
  local log="$LOGS/$2.log" tail=""
  [ -f "$log" ] && tail="$(tail -n 5 "$log" | cut -c1-240 | sed 's/^/cluster:   | /')"
  stop_all >/dev/null 2>&1 || true
  echo "cluster: error: $1 (log: $log)" >&2
  [ -z "$tail" ] || echo "$tail" >&2
  exit 1
}

start_bg() { # name log args...  (own session, so it outlives the caller's process group)
  local name="$1"; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9>&- 8>&- &
  echo $! >"$RUN/$name.pid"
}

kubeconfig() { # file token user
  local ca
  ca="$(base64 -w0 "$PKI/ca.crt")"
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: propeller-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: $3
  user:
    token: $2
contexts:
- name: propeller-test
  context:
    cluster: propeller-test
    user: $3
    namespace: default
current-context: propeller-test
KC
  chmod 600 "$1"
}

elapsed() { # start [end] -> seconds with one decimal
  awk -v a="${2:-$(date +%s.%N)}" -v b="$1" 'BEGIN { printf "%.1f", a - b }'
}

do_start() {
  local t0 ports ETCD_PORT PEER_PORT API_PORT KCM_PORT etcd_bin deadline n
  t0="$(date +%s.%N)"
  for b in kube-apiserver kube-controller-manager kubectl; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: run scripts/k8s/build-binaries.sh first"
  done
  etcd_bin="$(command -v etcd || true)"
  [ -n "$etcd_bin" ] || die "etcd not found: run scripts/k8s/build-binaries.sh (installs etcd-server)"
  command -v openssl >/dev/null || die "openssl not found"

  if [ -n "$(alive_pid kube-apiserver)" ] && [ -n "$(alive_pid etcd)" ] && [ -n "$(alive_pid kube-controller-manager)" ] \
     && "$KUBECTL" --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    say "already running in $DIR"
    return 0
  fi
  [ "$(stop_all)" = 0 ] || say "stopped leftovers of a previous start in $DIR"
  rm -rf "$DIR/etcd-data" "$PKI" "$RUN" "$LOGS" "$DIR/kubeconfig" "$DIR/env" "$DIR/kube-controller-manager.kubeconfig"
  mkdir -p "$RUN" "$LOGS" "$PKI"
  chmod 700 "$PKI"

  # --- keys and certificates ---
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=propeller-test-ca" \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$LOGS/openssl.log" 2>&1 || die "openssl failed (log: $LOGS/openssl.log)"
  local admin_token kcm_token
  admin_token="$(openssl rand -hex 24)"
  kcm_token="$(openssl rand -hex 24)"
  {
    echo "$admin_token,admin,admin,system:masters"
    echo "$kcm_token,system:kube-controller-manager,kube-controller-manager"
  } >"$PKI/tokens.csv"

  read -r ETCD_PORT PEER_PORT API_PORT KCM_PORT <<<"$(pick_ports 4)"
  kubeconfig "$DIR/kubeconfig" "$admin_token" admin
  kubeconfig "$DIR/kube-controller-manager.kubeconfig" "$kcm_token" kube-controller-manager

  # --- etcd ---
  start_bg etcd "$etcd_bin" --name propeller-test --data-dir "$DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "propeller-test=http://127.0.0.1:$PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --logger zap --log-level warn
  deadline=$(( $(date +%s) + 20 ))
  until [[ "$(http_get "$ETCD_PORT" /health 2>/dev/null)" == *'"health":"true"'* ]]; do
    ! start_gone etcd || fail_start "etcd exited" etcd
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "etcd not healthy after 20 s" etcd
    sleep 0.2
  done

  # --- kube-apiserver ---
  start_bg kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --token-auth-file="$PKI/tokens.csv" --anonymous-auth=false --authorization-mode=AlwaysAllow \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --allow-privileged=true --profiling=false
  deadline=$(( $(date +%s) + TIMEOUT ))
  until "$KUBECTL" --kubeconfig "$DIR/kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; do
    ! start_gone kube-apiserver || fail_start "kube-apiserver exited" kube-apiserver
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "kube-apiserver /readyz not ok after $TIMEOUT s" kube-apiserver
    sleep 0.25
  done
  local t_ready
  t_ready="$(date +%s.%N)"

  # --- kube-controller-manager ---
  start_bg kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$PKI/kcm" \
    --controllers="$CONTROLLERS" --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=false --profiling=false
  # Ready for workloads: default namespace, its default service account and that account's token
  # (1.20 admission rejects Pods until the token secret exists).
  deadline=$(( $(date +%s) + TIMEOUT ))
  until [ -n "$("$KUBECTL" --kubeconfig "$DIR/kubeconfig" --request-timeout=5s -n default \
                 get serviceaccount default -o 'jsonpath={.secrets[0].name}' 2>/dev/null)" ]; do
    ! start_gone kube-controller-manager || fail_start "kube-controller-manager exited" kube-controller-manager
    ! start_gone kube-apiserver || fail_start "kube-apiserver exited" kube-apiserver
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "no default service account token after $TIMEOUT s" kube-controller-manager
    sleep 0.25
  done

  cat >"$DIR/env" <<ENV
KUBECONFIG=$DIR/kubeconfig
APISERVER=https://127.0.0.1:$API_PORT
K8S_TOKEN=$admin_token
K8S_CA_FILE=$PKI/ca.crt
KUBECTL=$KUBECTL
ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
KCM_HEALTHZ=https://127.0.0.1:$KCM_PORT/healthz
ENV

  if [ -n "${PROPELLER_K8S_OWNER_PID:-}" ]; then
    local owner="$PROPELLER_K8S_OWNER_PID"
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/run/kube-apiserver.pid" ]; do sleep 1; done
                    [ -f "$2/run/kube-apiserver.pid" ] && PROPELLER_K8S_WATCHER_SELF=$$ "$3" stop "$2"' \
      watcher "$owner" "$DIR" "$SELF" >>"$LOGS/watcher.log" 2>&1 </dev/null 9>&- 8>&- &
    echo $! >"$RUN/watcher.pid"
  fi

  say "ready in $(elapsed "$t0") s (/readyz after $(elapsed "$t0" "$t_ready") s): apiserver https://127.0.0.1:$API_PORT, etcd :$ETCD_PORT, controller-manager :$KCM_PORT"
  say "KUBECONFIG=$DIR/kubeconfig (source $DIR/env)"
}

exec 9>"$DIR/.cluster.lock"
flock 9

case "$CMD" in
  start) do_start ;;
  stop)
    n="$(stop_all)"
    for name in "${COMPONENTS[@]}"; do
      [ -z "$(alive_pid "$name")" ] || die "$name still running"
    done
    if [ "$n" = 0 ]; then say "nothing running in $DIR"; else say "stopped $n processes in $DIR"; fi
    ;;
  status)
    down=""
    for name in etcd kube-apiserver kube-controller-manager; do
      [ -n "$(alive_pid "$name")" ] || down="$down $name"
    done
    if [ -z "$down" ]; then say "running in $DIR"; exit 0; fi
    say "not running in $DIR:$down"; exit 1
    ;;
  *) usage ;;
esac
