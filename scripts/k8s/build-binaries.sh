#!/usr/bin/env bash
# Build (or reuse cached) kube-apiserver, kube-controller-manager and kubectl
# from Debian's `kubernetes` source package, for the k8s-adapter tests.
#
#   scripts/k8s/build-binaries.sh           install deps if missing, build or reuse, print the bin dir
#   scripts/k8s/build-binaries.sh --check   exit 0 if the cached binaries exist and run, else 1 (builds nothing)
#   scripts/k8s/build-binaries.sh --force   rebuild even if cached binaries exist
#
# Cache: ${PROPELLER_K8S_CACHE:-/var/cache/propeller-k8s}/bin/ (+ bin/STAMP naming the source version).
# Needs root (apt-get). Only Debian's archive is used. See README.md beside this file.
set -euo pipefail

CACHE="${PROPELLER_K8S_CACHE:-/var/cache/propeller-k8s}"
BIN="$CACHE/bin"
STAMP="$BIN/STAMP"
WORK="$CACHE/work"
LOG="$CACHE/build.log"
BINARIES=(kube-apiserver kube-controller-manager kubectl)
DEBS=(golang-go etcd-server etcd-client golang-github-modern-go-reflect2-dev dpkg-dev make rsync openssl)
SRC_LIST=/etc/apt/sources.list.d/propeller-k8s-deb-src.sources

say() { echo "build-binaries: $*"; }
die() { echo "build-binaries: error: $*" >&2; exit 1; }

check_cached() {
  [ -f "$STAMP" ] || return 1
  local b
  for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] || return 1
  done
  "$BIN/kube-apiserver" --version >/dev/null 2>&1 || return 1
  "$BIN/kube-controller-manager" --version >/dev/null 2>&1 || return 1
  "$BIN/kubectl" version --client >/dev/null 2>&1 || return 1
}

MODE=build
case "${1:-}" in
  "") ;;
  --check) MODE=check ;;
  --force) MODE=force ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (use --check or --force)" ;;
esac

# What cluster.sh needs beside the binaries (a fresh machine may have the cache but not these).
runtime_missing() {
  command -v etcd >/dev/null 2>&1 || echo etcd-server
  command -v openssl >/dev/null 2>&1 || echo openssl
}

install_runtime() {
  local missing
  missing=$(runtime_missing | xargs)
  [ -n "$missing" ] || return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages $missing, and not root to install them"
  say "installing Debian packages: $missing"
  apt-get update >/dev/null 2>&1 || die "apt-get update failed"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-upgrade $missing >/dev/null 2>&1 \
    || die "apt-get install $missing failed"
}

if [ "$MODE" = check ]; then
  if check_cached; then
    missing=$(runtime_missing | xargs)
    if [ -n "$missing" ]; then
      say "cached binaries ok in $BIN, but missing Debian packages: $missing"
      exit 1
    fi
    say "ok: $(head -n1 "$STAMP") in $BIN"
    exit 0
  fi
  say "no usable cached binaries in $BIN"
  exit 1
fi

if [ "$MODE" = build ] && check_cached; then
  install_runtime
  say "reusing cached binaries ($(head -n1 "$STAMP"))"
  echo "$BIN"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root to build the Kubernetes binaries (apt-get install / apt-get source; once, then cached in $CACHE): sudo $0"
mkdir -p "$CACHE"
: >"$LOG"

# One build at a time per cache dir.
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE/.lock"
if [ "$MODE" = build ] && check_cached; then   # another run built it while we waited
  say "reusing cached binaries ($(head -n1 "$STAMP"))"
  echo "$BIN"
  exit 0
fi

run() { # run a command, output to the log; on failure name it and point at the log
  local what="$1"; shift
  "$@" >>"$LOG" 2>&1 || die "$what failed (see $LOG)"
}

remove_deb_src() {
  if [ -f "$SRC_LIST" ]; then
    rm -f "$SRC_LIST"
    apt-get update >>"$LOG" 2>&1 || true
  fi
}
trap remove_deb_src EXIT
trap 'exit 130' INT TERM   # so the EXIT trap also runs when interrupted

# 1. Debian packages --------------------------------------------------------
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  run "apt-get update" apt-get update
  run "apt-get install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends --no-upgrade "${missing[@]}"
fi
command -v go >/dev/null || die "go not found after installing golang-go"
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$REFLECT2" ] || die "$REFLECT2 missing (golang-github-modern-go-reflect2-dev)"

# 2. Source package (temporary deb-src entry) --------------------------------
rm -rf "$WORK"
mkdir -p "$WORK"
if ! ls "$CACHE"/dl/kubernetes_*.dsc >/dev/null 2>&1; then
  say "fetching Debian source package 'kubernetes' (temporary deb-src entry)"
  # Copy the Debian archive entries as deb-src: deb822 .sources files and/or one-line .list files.
  : >"$SRC_LIST.tmp"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    [ "$f" = "$SRC_LIST" ] && continue
    case "$f" in
      *.sources)
        # Keep only stanzas whose Types include deb and URIs look like Debian's archive.
        awk -v RS= -v ORS='\n\n' '/(^|\n)Types:[^\n]*deb/ && /(^|\n)URIs:[^\n]*debian/ {
            gsub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' "$f" >>"$SRC_LIST.tmp" ;;
      *)
        # one-line format -> deb822 stanza
        awk '$1=="deb" && $0 ~ /debian/ {
            uri=""; n=2; opts="";
            if ($2 ~ /^\[/) { while ($n !~ /\]$/) { n++ }; n++ }
            uri=$n; suite=$(n+1); comps="";
            for (i=n+2;i<=NF;i++) comps=comps (comps==""?"":" ") $i;
            printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n", uri, suite, comps }' "$f" >>"$SRC_LIST.tmp" ;;
    esac
  done
  [ -s "$SRC_LIST.tmp" ] || { rm -f "$SRC_LIST.tmp"; die "no Debian 'deb' entry found in /etc/apt/sources.list*"; }
  mv "$SRC_LIST.tmp" "$SRC_LIST"
  run "apt-get update (with deb-src)" apt-get update
  mkdir -p "$CACHE/dl.tmp"
  (cd "$CACHE/dl.tmp" && apt-get source --download-only kubernetes) >>"$LOG" 2>&1 \
    || { rm -rf "$CACHE/dl.tmp"; die "apt-get source --download-only kubernetes failed (see $LOG)"; }
  rm -rf "$CACHE/dl" && mv "$CACHE/dl.tmp" "$CACHE/dl"
  remove_deb_src
else
  say "using downloaded source package in $CACHE/dl"
fi
DSC=$(ls "$CACHE"/dl/kubernetes_*.dsc | head -n1)
VERSION=$(sed -n 's/^Version: //p' "$DSC" | head -n1)
[ -n "$VERSION" ] || die "cannot read Version from $DSC"
# Upstream version for the binaries' --version (there is no .git to derive it from).
UPSTREAM=${VERSION#*:}; UPSTREAM=${UPSTREAM%-*}; UPSTREAM=${UPSTREAM##*really}
[[ "$UPSTREAM" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || die "cannot parse upstream version from '$VERSION'"
KUBE_VER="v${BASH_REMATCH[0]}"; KUBE_MAJOR="${BASH_REMATCH[1]}"; KUBE_MINOR="${BASH_REMATCH[2]}"

say "unpacking kubernetes $VERSION and replacing vendored reflect2 with Debian's"
run "dpkg-source -x" dpkg-source -x "$DSC" "$WORK/src"
VR="$WORK/src/vendor/github.com/modern-go/reflect2"
[ -d "$VR" ] || die "vendored reflect2 not found at $VR"
find "$VR" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
find "$REFLECT2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$VR/" \;

# 3. Build (GOPATH mode, through the Makefile) --------------------------------
GOPATH_DIR="$WORK/gopath"
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -s "$WORK/src" "$GOPATH_DIR/src/k8s.io/kubernetes"
cat >"$WORK/version.env" <<VERS
KUBE_GIT_VERSION='$KUBE_VER'
KUBE_GIT_MAJOR='$KUBE_MAJOR'
KUBE_GIT_MINOR='$KUBE_MINOR'
KUBE_GIT_TREE_STATE='archive'
KUBE_GIT_COMMIT=''
VERS
say "building with $(go version | cut -d' ' -f3) (cold: 10-30 min on 2 cores, ~1.4 GB RAM; log: $LOG)"
start=$(date +%s)
(
  cd "$GOPATH_DIR/src/k8s.io/kubernetes"
  export GOPATH="$GOPATH_DIR" GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
         GOCACHE="$WORK/gocache" KUBE_VERBOSE=1 \
         KUBE_GIT_VERSION_FILE="$WORK/version.env"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"
) >>"$LOG" 2>&1 || die "make failed after $(( $(date +%s) - start ))s (see $LOG)"

OUT="$WORK/src/_output/bin"
[ -d "$OUT" ] || OUT="$WORK/src/_output/local/bin/linux/amd64"
mkdir -p "$BIN"
rm -f "$STAMP"
for b in "${BINARIES[@]}"; do
  [ -x "$OUT/$b" ] || die "make did not produce $b in $OUT (see $LOG)"
  install -m 0755 "$OUT/$b" "$BIN/$b.new" && mv -f "$BIN/$b.new" "$BIN/$b"
done
{
  echo "kubernetes $VERSION (Debian source package)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(go version | cut -d' ' -f3), reflect2 $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
} >"$STAMP"
check_cached || die "built binaries do not run --version"
say "built in $(( $(date +%s) - start ))s: $("$BIN/kube-apiserver" --version)"
[ -n "${PROPELLER_K8S_KEEP_WORK:-}" ] || rm -rf "$WORK"
echo "$BIN"
