#!/usr/bin/env bash
# Proves that a fresh Debian 12 machine with only rustup's toolchain passes
# the tests: builds a clean Debian 12 (bookworm) root filesystem with
# debootstrap, puts rustup's toolchains in it, clones this repository's
# current branch into it, and runs `CI=true bash .ci/run` there in a chroot,
# as root, with no standard input. docs/fresh-machine.md records a run.
#
#   sudo bash scripts/fresh-machine.sh [ROOT]
#
#   ROOT               where the root filesystem goes (default
#                      /var/tmp/gateway-fresh-root); reused when it already
#                      holds one, so `rm -rf` it for a new one
#   FRESH_MIRROR       Debian mirror (default http://deb.debian.org/debian)
#   FRESH_LOG          the run's output, also shown (default ROOT.log)
#   FRESH_KEEP_TARGET  1 keeps the clone's target/ and fuzz/target/ (about
#                      10 GB) afterwards; the rest of ROOT is about 6 GB
#
# What stands for what a person would do on a fresh machine:
#   - debootstrap --variant=minbase: Debian's minimal system, as in the
#     debian:12 container image (no make, gcc, curl, procps, git, node), plus
#     ca-certificates, which downloading rustup needs anyway.
#   - rustup's stable toolchain and ~/.cargo/bin are copied from this
#     machine's rustup (RUSTUP_HOME, CARGO_HOME), as `curl https://sh.rustup.rs
#     | sh` would install them. The nightly toolchain is copied too: it stands
#     for the `rustup toolchain install nightly --profile minimal` that
#     scripts/setup-test-deps.sh runs when nightly is missing, for machines
#     where rustup cannot download (then that step only reports it found).
#   - This machine's CA bundle replaces the new system's, and NODE_EXTRA_CA_CERTS,
#     PIP_CERT and npm's cafile point at it: for networks that intercept TLS
#     with their own CA. On an ordinary network the bundle is Debian's anyway.
#   - The clone is made from this machine's repository (the chroot has no git):
#     the committed HEAD of the current branch; uncommitted changes are not in it.
# The chroot shares this machine's network (the tests use loopback only) and
# its /proc, /sys, /dev, /dev/pts and /dev/shm (Chromium needs shared memory).
set -euo pipefail

say() { printf 'fresh-machine: %s\n' "$*"; }
die() { printf 'fresh-machine: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, mount and chroot need it)"
repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
branch=$(git -C "$repo" rev-parse --abbrev-ref HEAD)
root=${1:-/var/tmp/gateway-fresh-root}
root=$(realpath -m "$root")
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
log=${FRESH_LOG:-$root.log}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
arch=$(uname -m)-unknown-linux-gnu

[ -d "$rustup_home/toolchains/stable-$arch" ] ||
    die "no stable toolchain in $rustup_home: install rustup (https://rustup.rs)"
[ -n "$(git -C "$repo" status --porcelain)" ] &&
    say "warning: uncommitted changes in $repo are not part of the clone"

# --- 1. a minimal Debian 12 -----------------------------------------------------
if [ ! -f "$root/etc/debian_version" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    fi
    say "debootstrap --variant=minbase bookworm into $root from $mirror"
    mkdir -p "$root"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror"
else
    say "reusing the Debian $(cat "$root/etc/debian_version") root filesystem in $root"
fi
# What a Debian install configures: updates, security, a hosts file, DNS.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
[ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

# --- 2. rustup's toolchains -----------------------------------------------------
mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo"
for tc in stable nightly; do
    if [ -d "$rustup_home/toolchains/$tc-$arch" ] && [ ! -d "$root/root/.rustup/toolchains/$tc-$arch" ]; then
        say "copying the $tc toolchain"
        cp -a "$rustup_home/toolchains/$tc-$arch" "$root/root/.rustup/toolchains/"
    fi
done
printf 'version = "12"\ndefault_toolchain = "stable-%s"\nprofile = "default"\n' "$arch" \
    >"$root/root/.rustup/settings.toml"
rm -rf "$root/root/.cargo/bin"
mkdir -p "$root/root/.cargo/bin"
# rustup and its proxies only (cargo, rustc, ...): no cargo-fuzz or other tools.
for f in "$cargo_home"/bin/*; do
    name=$(basename "$f")
    if [ "$name" = rustup ] || [ "$(readlink "$f")" = rustup ]; then
        cp -a "$f" "$root/root/.cargo/bin/"
    fi
done
cat >"$root/root/.cargo/env" <<'EOF'
#!/bin/sh
case ":${PATH}:" in
    *:"$HOME/.cargo/bin":*) ;;
    *) export PATH="$HOME/.cargo/bin:$PATH" ;;
esac
EOF

# --- 3. the repository ----------------------------------------------------------
rm -rf "$root/root/gateway"
say "cloning $branch ($(git -C "$repo" rev-parse --short HEAD)) into $root/root/gateway"
git clone -q --no-local --branch "$branch" "$repo" "$root/root/gateway"

# --- 4. the run -----------------------------------------------------------------
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
mount_at() { # mount_at TARGET MOUNT-ARGS...
    local target=$root$1
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    mounted+=("$target")
}
mount_at /proc -t proc proc
mount_at /sys -t sysfs sysfs
mount_at /dev --bind /dev
mount_at /dev/pts --bind /dev/pts
mount_at /dev/shm --bind /dev/shm

ca=/etc/ssl/certs/ca-certificates.crt
say "running CI=true bash .ci/run in the chroot; output in $log"
start=$(date +%s)
set +e
chroot "$root" /usr/bin/env -i \
    HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CI=true NODE_EXTRA_CA_CERTS=$ca PIP_CERT=$ca npm_config_cafile=$ca \
    /bin/bash -c 'cd /root/gateway && bash .ci/run' </dev/null 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))
say "exit status $status after $((elapsed / 60)) min $((elapsed % 60)) s"

if [ "${FRESH_KEEP_TARGET:-0}" != 1 ]; then
    say "removing the clone's target/ and fuzz/target/ (FRESH_KEEP_TARGET=1 keeps them)"
    rm -rf "$root/root/gateway/target" "$root/root/gateway/fuzz/target"
fi
exit "$status"
