#!/bin/bash
# systemd-testbed.sh - run THIS checkout's Baton under a real systemd 252 (Debian bookworm, PID 1
# of a systemd-nspawn container), on a machine whose own PID 1 is not systemd. Needs root, a
# Debian/Ubuntu host and the Debian mirror + PyPI. Used by tests/systemd/; handy by hand too.
#
#   systemd-testbed.sh install        apt-get install systemd-container debootstrap zstd (if missing)
#   systemd-testbed.sh build          build the rootfs once and cache it (no-op when cached)
#   systemd-testbed.sh boot NAME      boot a throw-away container from the cached rootfs and
#                                     install systemd/baton.service in it (not started)
#   systemd-testbed.sh exec NAME CMD  run CMD inside the container (stdin is passed through)
#   systemd-testbed.sh shell NAME     an interactive shell inside
#   systemd-testbed.sh stop NAME      poweroff, wait, clean up cgroups and nspawn leftovers
#   systemd-testbed.sh demo           boot, start baton.service, show it, reload, stop
#
# The cached rootfs: Debian bookworm (minbase) with systemd, python3, python3-venv, the build
# tools python-prctl needs (it has no wheel on PyPI: gcc, libcap-dev, python3-dev), and a venv
# at /opt/baton-venv holding Baton's runtime dependencies (read from pyproject.toml). It is
# built once (about 1.5-2 min, network-bound) and kept as rootfs-bookworm-KEY.tar.zst plus the
# unpacked directory under $BATON_SDTEST_CACHE (default /var/cache/baton-systemd-testbed, outside
# the git tree so fresh clones on the same machine reuse it). KEY hashes everything the build
# depends on (package lists, pyproject dependencies, this script's BUILD_FORMAT), so changing the
# dependencies rebuilds it; older keys are deleted then.
#
# Each boot uses --volatile=overlay: the cached rootfs is never written (every change goes to a
# tmpfs), so containers are throw-away and several can run at once. The checkout
# ($BATON_SDTEST_SRC, default: the repository holding this script) is bind-mounted read-only at
# /opt/baton-src. The venv's site-packages has `baton -> /opt/baton-src` and /usr/local/bin/baton
# is a console script on the venv's python, so the container runs this checkout's code at the
# path the shipped unit names. The unit comes from systemd/baton.service, plus the drop-in
# tests/systemd/testbed.conf; the bootstrap from tests/systemd/bootstrap.yaml goes to
# /etc/baton/bootstrap.yaml. The container has its own network namespace (only `lo`).
#
# Environment: BATON_SDTEST_CACHE (see above), BATON_SDTEST_RUN (state of running containers,
# default /run/baton-systemd-testbed), BATON_SDTEST_SRC (see above), BATON_SDTEST_MIRROR
# (default: the first Debian mirror in /etc/apt/sources.list*, else deb.debian.org). While
# building, pip in the rootfs uses the host's CA bundle, PIP_INDEX_URL and *_proxy variables.
# Recipe and measurements: ../shared/recipes/systemd/REPORT.md (route (a)).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$(cd "${BATON_SDTEST_SRC:-$REPO}" && pwd)
CACHE=${BATON_SDTEST_CACHE:-/var/cache/baton-systemd-testbed}
RUN=${BATON_SDTEST_RUN:-/run/baton-systemd-testbed}
SUITE=bookworm
BUILD_FORMAT=1          # bump when the build steps below change
APT_PKGS=systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,python3,python3-venv,python3-dev,gcc,libc6-dev,libcap-dev
VENV=/opt/baton-venv
SRC_MOUNT=/opt/baton-src
INPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[systemd-testbed %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

mirror() {
    if [ -n "${BATON_SDTEST_MIRROR:-}" ]; then echo "$BATON_SDTEST_MIRROR"; return; fi
    local m
    m=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
            /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' \
            | head -1 | tr -d ' ') || true
    echo "${m:-http://deb.debian.org/debian}"
}

# -- install -------------------------------------------------------------------------------------

cmd_install() {
    require_root
    local need=()
    command -v systemd-nspawn >/dev/null || need+=(systemd-container)
    command -v debootstrap    >/dev/null || need+=(debootstrap)
    command -v zstd           >/dev/null || need+=(zstd)
    [ ${#need[@]} = 0 ] && return
    log "apt-get install ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${need[@]}" >/dev/null
}

# -- build ---------------------------------------------------------------------------------------

requirements() {    # Baton's runtime dependencies, one per line, from pyproject.toml
    python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$SRC/pyproject.toml"
}

rootfs_dir() {
    local key
    key=$(printf '%s\n' "$SUITE" "$APT_PKGS" "$BUILD_FORMAT" "$(requirements)" | sha256sum | cut -c1-12)
    echo "$CACHE/rootfs-$SUITE-$key"
}

# Run a command chrooted into ROOT with /proc and /dev mounted in a private mount namespace, so
# the mounts vanish with the command whatever happens. Network and DNS are the host's.
in_chroot() {
    local root=$1; shift
    unshare --mount --propagation private --fork -- /bin/sh -ec '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"
    ' in_chroot "$root" "$@"
}

provision() {   # the Python side of the rootfs: venv, deps, `baton` importable from the checkout
    local root=$1
    cp /etc/resolv.conf "$root/etc/resolv.conf"           # pip needs DNS while building
    requirements > "$root/opt/baton-requirements.txt"
    in_chroot "$root" python3 -m venv "$VENV"
    # Reach PyPI the way the host does: its CA bundle (a TLS-inspecting proxy's CA is trusted
    # there, not in the fresh rootfs), and its index and proxy settings if any.
    local pip_env=() var
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/opt/host-ca.crt"
        pip_env+=(PIP_CERT=/opt/host-ca.crt)
    fi
    for var in PIP_INDEX_URL http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
        [ -n "${!var:-}" ] && pip_env+=("$var=${!var}")
    done
    in_chroot "$root" /usr/bin/env "${pip_env[@]}" "$VENV/bin/pip" install --no-cache-dir \
        --disable-pip-version-check -r /opt/baton-requirements.txt > "$CACHE/pip.log" 2>&1 \
        || { tail -20 "$CACHE/pip.log" >&2; die "pip install failed (log: $CACHE/pip.log)"; }
    rm -f "$root/opt/host-ca.crt"
    local site
    site=$(in_chroot "$root" "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # The repository root is the package `baton`: a symlink named baton makes the bind-mounted
    # checkout importable as baton.supervisor, ... (no build step, nothing written to it).
    ln -s "$SRC_MOUNT" "$root$site/baton"
    # The console script pip would generate, at the path systemd/baton.service uses.
    cat > "$root/usr/local/bin/baton" <<EOF
#!$VENV/bin/python
import sys
from baton.supervisor.cli import main
sys.exit(main())
EOF
    chmod 755 "$root/usr/local/bin/baton"
    : > "$root/etc/resolv.conf"                           # the container has no network anyway
}

build_rootfs() {    # debootstrap + provision into DIR.part, then cache DIR.tar.zst
    local dir=$1 tmp=$1.part
    rm -rf "$tmp"
    log "debootstrap $SUITE from $(mirror) (+$APT_PKGS)"
    debootstrap --variant=minbase --include="$APT_PKGS" "$SUITE" "$tmp" "$(mirror)" \
        > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    log "venv $VENV: $(requirements | tr '\n' ' ')"
    provision "$tmp"
    # drop apt caches; keep debootstrap's machine-id (an empty one would mean ConditionFirstBoot)
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
    log "caching $dir.tar.zst"
    tar -C "$tmp" --numeric-owner --xattrs --acls -I 'zstd -T0 -3' -cf "$dir.tar.zst.part" .
    mv "$dir.tar.zst.part" "$dir.tar.zst"
    mv "$tmp" "$dir"
}

cmd_build() {
    require_root
    cmd_install
    mkdir -p "$CACHE"
    local dir; dir=$(rootfs_dir)
    [ -f "$dir/.complete" ] && return
    exec 9> "$CACHE/.lock"
    flock 9                                         # another run may be building the same rootfs
    if [ ! -f "$dir/.complete" ]; then
        local t0=$SECONDS
        if [ -f "$dir.tar.zst" ]; then
            log "unpacking $dir.tar.zst"
            rm -rf "$dir.part"; mkdir -p "$dir.part"
            tar -C "$dir.part" --numeric-owner --xattrs --acls -I zstd -xf "$dir.tar.zst"
            mv "$dir.part" "$dir"
        else
            build_rootfs "$dir"
        fi
        touch "$dir/.complete"
        log "rootfs ready in $((SECONDS - t0)) s: $dir"
        local old
        for old in "$CACHE"/rootfs-"$SUITE"-*; do     # rootfs built for other dependencies
            case "$old" in "$dir"|"$dir.tar.zst") ;; *) log "removing stale $old"; rm -rf "$old" ;; esac
        done
    fi
    exec 9>&-
}

# -- containers ----------------------------------------------------------------------------------

# Put this shell into its own cgroup, so that nspawn's payload/supervisor cgroups land under it:
# nspawn runs with --keep-unit because there is no systemd on the host to make a scope for it.
enter_own_cgroup() {
    local cg=$1 h
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then          # unified host
        mkdir -p "/sys/fs/cgroup/$cg" && echo "$BASHPID" > "/sys/fs/cgroup/$cg/cgroup.procs"
    else                                                               # hybrid / legacy host
        for h in unified systemd; do
            [ -d "/sys/fs/cgroup/$h" ] || continue
            mkdir -p "/sys/fs/cgroup/$h/$cg" && echo "$BASHPID" > "/sys/fs/cgroup/$h/$cg/cgroup.procs"
        done
    fi
}

remove_cgroup() {
    local cg=$1
    [ -n "$cg" ] || return 0
    find "/sys/fs/cgroup/$cg" "/sys/fs/cgroup/unified/$cg" "/sys/fs/cgroup/systemd/$cg" \
        -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

leader() {      # the container's PID 1 (systemd), a child of systemd-nspawn
    local pidfile=$RUN/$1/nspawn.pid
    [ -f "$pidfile" ] || return 0
    ps -o pid= --ppid "$(cat "$pidfile")" | tr -d ' ' | head -1
}

cmd_exec() {
    local name=$1; shift
    local l; l=$(leader "$name"); [ -n "$l" ] || die "container $name is not running"
    nsenter -t "$l" -m -u -i -n -p -C env -i PATH=$INPATH TERM="${TERM:-dumb}" \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 LANG=C.UTF-8 "$@"
}

poll() {        # poll TENTHS CMD...: run CMD every 0.1 s until it succeeds, at most TENTHS times
    local n=$1 i; shift
    for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.1; done
    return 1
}
gone() { ! kill -0 "$1" 2>/dev/null; }
has_leader() { [ -n "$(leader "$1")" ]; }
# While nspawn sets up, its transient "outer child" can be the child we find: ask again each
# time until the child we find runs a systemd that listens on its private socket.
has_manager() { local l; l=$(leader "$1"); [ -n "$l" ] && [ -S "/proc/$l/root/run/systemd/private" ]; }

install_baton() {   # unit + test drop-in + bootstrap, all read from the bind-mounted checkout
    cmd_exec "$1" sh -ec "
        install -D -m 644 $SRC_MOUNT/systemd/baton.service /etc/systemd/system/baton.service
        install -D -m 644 $SRC_MOUNT/tests/systemd/testbed.conf /etc/systemd/system/baton.service.d/testbed.conf
        install -D -m 644 $SRC_MOUNT/tests/systemd/bootstrap.yaml /etc/baton/bootstrap.yaml
        systemctl daemon-reload"
}

cmd_boot() {
    require_root
    local name=$1 dir st=$RUN/$1
    dir=$(rootfs_dir)
    [ -f "$dir/.complete" ] || die "no rootfs at $dir; run: $0 build"
    [ -e "$st/nspawn.pid" ] && kill -0 "$(cat "$st/nspawn.pid")" 2>/dev/null && die "$name is already running"
    rm -rf "$st"; mkdir -p "$st"
    echo "baton-sdtest-$name" > "$st/cgroup"
    # --volatile=overlay: the cached rootfs stays pristine, all writes go to a tmpfs
    # --private-network: own netns with lo only (also what gives the container CAP_NET_ADMIN)
    # --register=no --keep-unit: no machined, no host systemd to talk to
    # SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: pure cgroup2 inside, as on real Debian 12+ hosts
    ( enter_own_cgroup "baton-sdtest-$name"
      export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
      exec setsid systemd-nspawn -q -D "$dir" -M "$name" -b --volatile=overlay \
          --register=no --keep-unit --private-network --console=passive \
          --bind-ro="$SRC:$SRC_MOUNT" \
          > "$st/console.log" 2>&1 < /dev/null ) &
    echo $! > "$st/nspawn.pid"
    poll 100 has_leader "$name" || { cat "$st/console.log" >&2; cmd_stop "$name"; die "container $name did not start"; }
    # systemctl talks to PID 1 over its private socket, which appears shortly after PID 1 starts
    poll 300 has_manager "$name" \
        || { tail -30 "$st/console.log" >&2; cmd_stop "$name"; die "no systemd in $name"; }
    local l; l=$(leader "$name")
    local state
    state=$(timeout 60 nsenter -t "$l" -m -u -i -n -p -C env -i PATH=$INPATH \
        systemctl is-system-running --wait 2>/dev/null || true)
    if [ "$state" != running ]; then
        cmd_exec "$name" systemctl --failed --no-pager >&2 || true
        [ "$state" = degraded ] || { cmd_stop "$name"; die "container $name: system is '$state'"; }
    fi
    install_baton "$name"
    log "container $name booted (leader pid $l, system $state), baton.service installed"
}

cmd_stop() {
    local name=$1 st=$RUN/$1 n
    [ -f "$st/nspawn.pid" ] || return 0
    n=$(cat "$st/nspawn.pid")
    if kill -0 "$n" 2>/dev/null; then
        cmd_exec "$name" systemctl poweroff 2>/dev/null || true
        if ! poll 150 gone "$n"; then
            log "poweroff of $name timed out; SIGTERM to systemd-nspawn $n"
            kill "$n" 2>/dev/null || true
            poll 50 gone "$n" || kill -KILL "$n" 2>/dev/null || true
        fi
    fi
    remove_cgroup "$(cat "$st/cgroup" 2>/dev/null || true)"
    # the host's /run is not a tmpfs here: nspawn leaves this behind ("Attempted to remove disk
    # file system under /run/systemd/nspawn/propagate/NAME")
    rm -rf "/run/systemd/nspawn/propagate/$name" "$st"
}

cmd_shell() { cmd_exec "$1" /bin/bash -l; }

DEMO_NAME=""
cmd_demo() {
    local name=baton-demo-$$
    cmd_build
    DEMO_NAME=$name
    trap 'cmd_stop "$DEMO_NAME"' EXIT
    cmd_boot "$name"
    cmd_exec "$name" systemctl start baton.service
    cmd_exec "$name" systemctl status --no-pager baton.service || true
    cmd_exec "$name" systemctl reload baton.service || log "reload failed"
    cmd_exec "$name" systemctl show -p MainPID,ActiveState,SubState,NRestarts,StatusText baton.service
    cmd_exec "$name" baton status
    cmd_exec "$name" systemctl stop baton.service
    cmd_exec "$name" journalctl -u baton.service --no-pager
}

sub=${1:-}; [ $# -gt 0 ] && shift
case "$sub" in
    install) cmd_install ;;
    build)   cmd_build ;;
    boot)    [ $# = 1 ] || die "usage: $0 boot NAME"; cmd_boot "$1" ;;
    exec)    [ $# -ge 2 ] || die "usage: $0 exec NAME CMD..."; cmd_exec "$@" ;;
    shell)   [ $# = 1 ] || die "usage: $0 shell NAME"; cmd_shell "$1" ;;
    stop)    [ $# = 1 ] || die "usage: $0 stop NAME"; cmd_stop "$1" ;;
    demo)    cmd_demo ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
