#!/usr/bin/env bash
# Tests the binary the Dockerfile copies into its runtime image, without
# Docker (no engine runs on these machines):
#
#   scripts/image-check.sh            build it as the Dockerfile does
#                                     (cargo build --release --locked -p gateway)
#   scripts/image-check.sh BINARY     check an existing build instead (make test
#                                     passes the debug binary: same libraries)
#
#   1. Strips debug info as the Dockerfile's build stage does.
#   2. Its shared libraries are ones the runtime image has: distroless
#      cc-debian12 ships glibc (libc, libm, libpthread, libdl, librt, the
#      loader) and libgcc_s, nothing else; and it needs no glibc newer than
#      Debian 12's 2.36.
#   3. `gateway --check` accepts config/example.toml with the image's
#      environment (GATEWAY_CONFIG, GATEWAY_LISTEN=0.0.0.0:4000).
#   4. Started as the image starts it (same environment, as uid 65532 when
#      run as root), it answers /healthz and /readyz, and on SIGTERM exits
#      with status 0 within 10 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'image-check: %s\n' "$*"; }
die() { printf 'image-check: error: %s\n' "$*" >&2; exit 1; }

# What the runtime stage of the Dockerfile provides.
RUNTIME_LIBS="linux-vdso.so.1 ld-linux-x86-64.so.2 ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libgcc_s.so.1"
RUNTIME_GLIBC=2.36
IMAGE_UID=65532

if [ $# -ge 1 ]; then
    src=$1
    [ -x "$src" ] || die "$src is not an executable"
else
    say "building the release binary as the Dockerfile does"
    cargo build --release --locked -p gateway --bin gateway
    src=${CARGO_TARGET_DIR:-target}/release/gateway
fi
for tool in ldd objdump objcopy curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian packages binutils, libc-bin, curl)"
done

work=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"

# 1. As the build stage installs it.
bin="$work/gateway"
objcopy --strip-debug "$src" "$bin"
chmod 755 "$bin"
say "$src: $(du -h "$src" | cut -f1), stripped of debug info $(du -h "$bin" | cut -f1)"

# 2. Libraries and glibc version.
libs=$(ldd "$bin" | awk '{print $1}' | xargs -n1 basename)
for lib in $libs; do
    case " $RUNTIME_LIBS " in
        *" $lib "*) ;;
        *) die "links $lib, which the distroless cc runtime image does not have (ldd: $(ldd "$bin" | tr '\n' ' '))" ;;
    esac
done
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ "$(printf '%s\n%s\n' "$glibc" "$RUNTIME_GLIBC" | sort -V | tail -1)" = "$RUNTIME_GLIBC" ] ||
    die "needs glibc $glibc, newer than the runtime image's $RUNTIME_GLIBC"
say "shared libraries: $(echo "$libs" | tr '\n' ' ')(all in the runtime image), glibc >= $glibc needed, $RUNTIME_GLIBC there"

# 3. The image's default config with the image's environment.
image_env=(env -i "PATH=/usr/bin:/bin" "GATEWAY_CONFIG=$PWD/config/example.toml" "GATEWAY_LISTEN=0.0.0.0:4000")
out=$("${image_env[@]}" "$bin" --check) || die "gateway --check with the image's config failed: $out"
grep -q 'listen 0.0.0.0:4000' <<<"$out" || die "unexpected --check output: $out"
say "gateway --check: $out"

# 4. Run it as the image does, on a free loopback port, as the image's user.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_user=()
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1; then
    as_user=(setpriv --reuid "$IMAGE_UID" --regid "$IMAGE_UID" --clear-groups)
fi
cp config/example.toml "$work/gateway.toml"
chmod 644 "$work/gateway.toml"
env -i "PATH=/usr/bin:/bin" "GATEWAY_CONFIG=$work/gateway.toml" "GATEWAY_LISTEN=127.0.0.1:$port" \
    "${as_user[@]}" "$bin" >"$work/gateway.log" 2>&1 &
pid=$!
ready=""
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/gateway.log" >&2; die "the gateway exited at start"; }
    sleep 0.1
done
[ -n "$ready" ] || { cat "$work/gateway.log" >&2; die "no /readyz answer within 10 s"; }
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || die "/healthz did not answer 200"
kill -TERM "$pid"
status=""
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        status=0
        wait "$pid" || status=$?
        break
    fi
    sleep 0.1
done
[ -n "$status" ] || { cat "$work/gateway.log" >&2; die "still running 10 s after SIGTERM"; }
pid=""
[ "$status" -eq 0 ] || { cat "$work/gateway.log" >&2; die "exited with status $status after SIGTERM"; }
who="uid $(id -u)"
[ ${#as_user[@]} -eq 0 ] || who="uid $IMAGE_UID"
say "ran as $who: /healthz and /readyz answered 200, SIGTERM exited with status 0"
say "ok"
