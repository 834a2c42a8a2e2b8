#!/usr/bin/env bash
# Build the newest CPython 3.13 (GIL) and its free-threaded twin (3.13t) from
# Debian's python3.13 source package, into a cache outside the clone, and print
# the two interpreter paths (one per line).  Reuses cached builds.
#
# Why: pyenv here stops at 3.13.0.  3.13.8+ parks late-attaching threads forever
# instead of pthread_exit'ing them (gh-87135 backport), and a free-threaded build
# has no GIL to hide races: both must be tested (issue 7).
#
# Source: Debian sid, through a deb-src line that reuses the archive URI already
# configured in this machine's apt sources; if sid cannot be fetched, trixie
# (3.13.5: free-threaded too, without the hang-forever change).  Exit status 3
# (and a reason on stderr) when no source can be had at all.
set -euo pipefail

CACHE=${EG_CPYTHON_CACHE:-/var/cache/exitguard-ci/cpython}
mkdir -p "$CACHE"
log() { echo "build-cpython: $*" >&2; }

existing() {
    local gil ft
    gil=$(ls -d "$CACHE"/3.13.*-gil/bin/python3.13 2>/dev/null | sort -V | tail -1 || true)
    ft=$(ls -d "$CACHE"/3.13.*-ft/bin/python3.13t 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$gil" ] && [ -n "$ft" ] && "$gil" -c 1 && "$ft" -c 1; then
        echo "$gil"; echo "$ft"; return 0
    fi
    return 1
}
if existing; then log "reusing cached builds in $CACHE"; exit 0; fi

uri=$(grep -rhoE '^URIs: +https?://[^ ]*debian/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -1 | awk '{print $2}' || true)
if [ -z "$uri" ]; then
    uri=$(grep -rhoE '^deb +https?://[^ ]*debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -1 | awk '{print $2}' || true)
fi
[ -n "$uri" ] || { log "no Debian archive URI in the apt sources"; exit 3; }

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q build-essential dpkg-dev pkg-config libssl-dev zlib1g-dev libffi-dev \
    libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev libgdbm-dev \
    >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 || true; apt-get install -y -q build-essential dpkg-dev pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev uuid-dev >/dev/null; }

work=$(mktemp -d "$CACHE/src.XXXXXX")
trap 'rm -rf "$work"' EXIT
# sid's index lists several python3.13 versions, but the archive reached here serves
# the files of only some of them (3.13.18's are 404, 3.13.15's are there): ask for
# each listed version explicitly, newest first.  trixie's 3.13.5 is a fallback that
# predates the hang-forever change, so using it is reported loudly (FALLBACK on
# stdout's last line is read by .ci/run).
fetched=""
for suite in sid trixie; do
    list=/etc/apt/sources.list.d/exitguard-src-$suite.list
    echo "deb-src [trusted=yes] $uri $suite main" > "$list"
    if apt-get update -q -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
            -o APT::Get::List-Cleanup=0 -o Acquire::Check-Valid-Until=false >/dev/null 2>&1; then
        for v in $(apt-cache showsrc python3.13 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | uniq); do
            if (cd "$work" && apt-get source -q --download-only "python3.13=$v" >/dev/null 2>&1); then
                fetched="$suite $v"
                break
            fi
            rm -f "$work"/python3.13_*
            log "python3.13 $v is listed in $suite but its files could not be fetched"
        done
    fi
    rm -f "$list"
    [ -n "$fetched" ] && break
    log "could not fetch python3.13 sources from $suite"
done
[ -n "$fetched" ] || { log "no python3.13 source package from sid or trixie"; exit 3; }
case "$fetched" in
    sid*) ;;
    *) log "FALLBACK: sid's python3.13 could not be fetched; building $fetched instead" ;;
esac

tarball=$(ls "$work"/python3.13_*.orig.tar.* | head -1)
version=$(basename "$tarball" | sed -E 's/^python3\.13_([0-9]+\.[0-9]+\.[0-9]+).*/\1/')
log "building CPython $version from Debian $fetched"
tar -xf "$tarball" -C "$work"
srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name "Python-*" | head -1)
[ -n "$srcdir" ] || srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)

build() {   # $1: suffix, rest: configure flags
    local suffix=$1; shift
    local prefix="$CACHE/$version-$suffix" b="$work/build-$suffix"
    mkdir -p "$b"
    (cd "$b" && "$srcdir/configure" -q --prefix="$prefix" --without-ensurepip "$@" >/dev/null \
        && make -s -j"$(nproc)" >/dev/null 2>&1 && make -s install >/dev/null 2>&1)
}
build gil
build ft --disable-gil
existing || { log "the builds did not produce working interpreters"; exit 1; }
