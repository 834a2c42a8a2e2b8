#!/usr/bin/env bash
# The Debian sid tier: CPython 3.14 and 3.15 (Debian's binary packages) and their
# debug builds (-dbg: C asserts on, sys.gettotalrefcount), in a minbase sid chroot
# cached outside the clone.
#
#   .ci/sid.sh setup             create or refresh the chroot; prints nothing on
#                                success; exit 3 (reason on stderr's last line) when
#                                the archive cannot be reached
#   .ci/sid.sh pythons           the interpreters inside, one per line
#   .ci/sid.sh run CMD...        run CMD in a fresh copy of the work tree inside the
#                                chroot (/work/run-*, removed afterwards unless
#                                EG_SID_KEEP is set), with /proc, /dev and the host's
#                                CA bundle; the exit status is CMD's.  EG_SID_EXPORT
#                                names paths of the copy (relative to the tree, space
#                                separated) to bring back into the host's tree after
#                                CMD, whatever its status: make bench-all uses it for
#                                bench/results and the wheel cache
#
# Why a chroot: neither 3.14 nor 3.15 is in pyenv here, and sid is where Debian
# publishes them.  Facts this script works around (issue 10):
# - sid's Release file is past its Valid-Until on the archive reached here, so apt
#   inside runs with Acquire::Check-Valid-Until=false;
# - PyPI is reached through a proxy whose CA only the host trusts: the host's bundle
#   is copied in, and pip finds it through PIP_CERT/SSL_CERT_FILE as on the host;
# - pip and venv need /proc.
set -euo pipefail

CACHE=${EG_SID_CACHE:-/var/cache/exitguard-ci/sid}
ROOT=$CACHE/root
STAMP=$ROOT/.exitguard-ready
PACKAGES="python3.14 python3.14-dev python3.14-venv python3.14-dbg
          python3.15 python3.15-dev python3.15-venv python3.15-dbg
          gcc g++ make ca-certificates valgrind"
log() { echo "sid: $*" >&2; }
HOST_CA=/etc/ssl/certs/ca-certificates.crt

archive_uri() {
    local uri
    uri=$(grep -rhoE '^URIs: +https?://[^ ]*debian/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -1 | awk '{print $2}' || true)
    [ -n "$uri" ] || uri=$(grep -rhoE '^deb +https?://[^ ]*debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -1 | awk '{print $2}' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

in_root() {   # run a shell command in the chroot
    # A private mount namespace per call: /proc and /dev are mounted for this
    # command only and vanish with it, so concurrent runs never unmount each
    # other's, and nothing stays mounted inside the cache (an rm -rf of the chroot
    # can then never reach the host's /dev).
    [ -f "$HOST_CA" ] && install -D -m 0644 "$HOST_CA" "$ROOT$HOST_CA.host" 2>/dev/null || true
    unshare -m --propagation private /bin/bash -c '
        mount -t proc proc "$1/proc" && mount --bind /dev "$1/dev" || exit 97
        exec chroot "$1" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
            LANG=C.UTF-8 CI="$3" TERM=dumb \
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt.host \
            SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt.host \
            REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt.host \
            PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
            /bin/bash -c "$2"' in_root "$ROOT" "$1" "${CI:-}"
}

setup() {
    # The stamp holds the package list it was made with: a changed list installs
    # again (apt skips what is there already).
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(echo $PACKAGES)" ] \
       && in_root 'for p in python3.14 python3.15 python3.14-dbg python3.15-dbg; do $p -c 1 || exit 1; done'; then
        return 0
    fi
    if ! command -v debootstrap >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q debootstrap >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 || true; apt-get install -y -q debootstrap >/dev/null 2>&1; } \
            || { log "cannot install debootstrap from the host's archive"; exit 3; }
    fi
    local uri; uri=$(archive_uri)
    if [ ! -x "$ROOT/bin/bash" ]; then
        rm -rf "$ROOT"; mkdir -p "$CACHE"
        log "debootstrap --variant=minbase sid from $uri"
        debootstrap --variant=minbase sid "$ROOT" "$uri" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$ROOT"; log "debootstrap of sid failed (archive unreachable?)"; exit 3; }
    fi
    log "installing $(echo $PACKAGES) in the chroot"
    in_root "export DEBIAN_FRONTEND=noninteractive
        apt-get -q -o Acquire::Check-Valid-Until=false update >/tmp/apt.log 2>&1 &&
        apt-get -q -y -o Acquire::Check-Valid-Until=false install --no-install-recommends $(echo $PACKAGES) >>/tmp/apt.log 2>&1" \
        || { in_root 'tail -5 /tmp/apt.log' >&2 || true; log "apt-get in the sid chroot failed"; exit 3; }
    echo $PACKAGES > "$STAMP"
}

pythons() {
    for p in python3.14 python3.15 python3.14-dbg python3.15-dbg; do
        [ -x "$ROOT/usr/bin/$p" ] && echo "$p"
    done
}

run() {
    local here; here=$(cd "$(dirname "$0")/.." && pwd)
    # A fresh copy per run (its own folder, so runs may overlap): nothing built on
    # the host or by an earlier run leaks in; venvs are recreated by the Makefile.
    local name; name=run-$$-$(date +%s%N)
    local dest=$ROOT/work/$name
    mkdir -p "$dest"
    # bench/build/<version> holds the host's builds; only the wheel cache beside
    # them is worth copying in.
    (cd "$here" && tar --exclude=./.venv --exclude=./build --exclude=./.git \
        --exclude='./tests/stress/c/build' --exclude='./bench/build/[0-9]*' --exclude='*.so' -cf - .) | tar -xf - -C "$dest"
    local cmd="cd /work/$name &&"
    for a in "$@"; do cmd+=" $(printf '%q' "$a")"; done
    local rc=0
    in_root "$cmd" || rc=$?
    local p
    for p in ${EG_SID_EXPORT:-}; do
        case $p in /*|*..*) echo "sid: EG_SID_EXPORT: $p is not a path inside the tree" >&2; continue ;; esac
        [ -e "$dest/$p" ] && (cd "$dest" && tar -cf - "$p") | tar -xf - -C "$here"
    done
    [ -n "${EG_SID_KEEP:-}" ] || rm -rf "$dest"
    return $rc
}

case "${1:-}" in
    setup) setup ;;
    pythons) pythons ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 setup | pythons | run CMD..." >&2; exit 2 ;;
esac
