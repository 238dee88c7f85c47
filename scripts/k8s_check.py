#!/usr/bin/env python3
"""Checks of the rendered k8s/ manifests that Kubernetes schemas cannot make.

Called by scripts/k8s-lint.sh (with the lint venv's python, which has PyYAML):

  k8s_check.py split RENDERED OUT_CORE OUT_CRD
      Split a `kubectl kustomize` output into the objects Kubernetes' own
      schemas know (OUT_CORE, for kubernetes-validate) and the Prometheus
      Operator objects (OUT_CRD); any other custom kind is an error.
  k8s_check.py objects RENDERED [--secrets-external] [--rules-out FILE]
      Cross-object checks of one rendered overlay (see check_objects), and
      write the PrometheusRule's spec as a promtool rules file.
  k8s_check.py dashboard DASHBOARD_JSON
      The dashboard parses and queries only documented metrics.

Metric names are those in docs/metrics.md; alerts and the dashboard may use
nothing else (plus Prometheus' own `up`).
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Kinds validated here instead of by kubernetes-validate, which has no schema
# for them (they come from the Prometheus Operator's CRDs).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# What the drain budget in k8s/base/deployment.yaml and docs/deploy.md
# assumes: the gateway exits at most this long after SIGTERM.
SHUTDOWN_DEADLINE_SECONDS = 45

# Series Prometheus makes itself, and PromQL words that look like names.
EXTRA_SERIES = {"up"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "label_values", "label_replace", "clamp_min", "clamp_max", "abs", "absent",
    "vector", "scalar", "time", "le", "changes", "resets", "sort", "sort_desc",
}


class CheckError(Exception):
    pass


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def documented_metrics():
    """Metric names in the first column of docs/metrics.md's tables."""
    names = set()
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`((?:gateway|process)_[a-z0-9_]+)`\s*\|", line)
        if m:
            names.add(m.group(1))
    if len(names) < 10:
        raise CheckError(f"{METRICS_DOC}: found only {len(names)} metric names")
    return names


def metric_names_in(expr):
    """Series names a PromQL expression selects (a close approximation:
    identifiers that are not functions, keywords, label names or strings)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\$\w+|\$\{[^}]*\}", "", expr)  # Grafana variables
    names = set()
    for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if tok in PROMQL_WORDS or re.fullmatch(r"[0-9.e+-]+", tok):
            continue
        names.add(tok)
    return names


def check_metric_refs(where, expr, known):
    for name in metric_names_in(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in known or name in EXTRA_SERIES:
            continue
        if base != name and base in known:
            continue
        raise CheckError(f"{where}: metric `{name}` is not in docs/metrics.md (expr: {expr.strip()})")


def is_core_api(api_version):
    """Kubernetes' own API groups: the core group (`v1`), groups without a
    dot (`apps`, `policy`, `autoscaling`, ...) and `*.k8s.io`."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def cmd_split(rendered, out_core, out_crd):
    core, crd = [], []
    for doc in load_docs(rendered):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_KINDS:
            crd.append(doc)
        elif not is_core_api(doc.get("apiVersion") or ""):
            raise CheckError(f"{rendered}: {key} is a custom kind this check does not know")
        else:
            core.append(doc)
    for path, docs in ((out_core, core), (out_crd, crd)):
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    print(f"{len(core)} Kubernetes object(s), {len(crd)} Prometheus Operator object(s)")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_deployment(dep, docs, secrets_external):
    name = dep["metadata"]["name"]
    spec = dep["spec"]["template"]["spec"]
    where = f"Deployment {name}"
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"].get("matchLabels"), pod_labels):
        raise CheckError(f"{where}: selector does not match the pod template's labels")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        raise CheckError(f"{where}: pod securityContext.runAsNonRoot must be true")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    config_maps = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    for v in volumes.values():
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in config_maps:
            raise CheckError(f"{where}: volume {v['name']} refers to missing ConfigMap {cm}")
    for c in spec["containers"]:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
            raise CheckError(f"{cw}: needs readOnlyRootFilesystem and no privilege escalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            raise CheckError(f"{cw}: must drop ALL capabilities")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
            raise CheckError(f"{cw}: needs memory requests and limits")
        ports = {p.get("name") for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if p is None:
                if name == "gateway":
                    raise CheckError(f"{cw}: missing {probe}")
                continue
            port = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                raise CheckError(f"{cw}: {probe} uses port {port!r}, not a container port")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                raise CheckError(f"{cw}: mounts unknown volume {m['name']}")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if not ref or ref.get("optional"):
                continue
            s = secrets.get(ref["name"])
            if s is None:
                if not secrets_external:
                    raise CheckError(f"{cw}: env {e['name']} refers to missing Secret {ref['name']}")
            elif ref["key"] not in {**s.get("data", {}), **s.get("stringData", {})}:
                raise CheckError(f"{cw}: Secret {ref['name']} has no key {ref['key']}")
    if name == "gateway":
        c = spec["containers"][0]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
        if pre is None:
            raise CheckError(f"{where}: needs a preStop sleep (see k8s/base/deployment.yaml)")
        if grace < pre + SHUTDOWN_DEADLINE_SECONDS + 5:
            raise CheckError(
                f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre} s + "
                f"shutdown deadline {SHUTDOWN_DEADLINE_SECONDS} s + 5 s"
            )
        http = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == "http"]
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/gateway"), None)
        cm_name = mount and volumes[mount["name"]].get("configMap", {}).get("name")
        cm = next((d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name), None)
        if not http or cm is None or "gateway.toml" not in cm.get("data", {}):
            raise CheckError(f"{where}: needs a port `http` and gateway.toml mounted at /etc/gateway")
        listen = tomllib.loads(cm["data"]["gateway.toml"]).get("server", {}).get("listen", "")
        if listen != f"0.0.0.0:{http[0]}":
            raise CheckError(f"{where}: gateway.toml listens on {listen!r}, the port `http` is {http[0]}")
        metrics = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == "metrics"]
        metrics_listen = tomllib.loads(cm["data"]["gateway.toml"]).get("server", {}).get("metrics_listen")
        if metrics and metrics_listen != f"0.0.0.0:{metrics[0]}":
            raise CheckError(f"{where}: gateway.toml metrics_listen is {metrics_listen!r}, the port `metrics` is {metrics[0]}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if metrics and c[probe]["httpGet"]["port"] != "metrics":
                raise CheckError(f"{where}: {probe} must use the port `metrics` (metrics_listen), which clients cannot fill")
        if c["readinessProbe"]["httpGet"]["path"] != "/readyz":
            raise CheckError(f"{where}: readiness must probe /readyz")
        if c["livenessProbe"]["httpGet"]["path"] != "/healthz":
            raise CheckError(f"{where}: liveness must probe /healthz")
        if c["startupProbe"]["httpGet"]["path"] != "/healthz":
            raise CheckError(f"{where}: the startup probe must probe /healthz")


def check_objects(rendered, secrets_external, rules_out):
    docs = load_docs(rendered)
    names = {}
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        if key in names:
            raise CheckError(f"{rendered}: duplicate {key}")
        names[key] = d
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    for dep in deployments:
        check_deployment(dep, docs, secrets_external)
    pods = [(d, d["spec"]["template"]["metadata"].get("labels", {})) for d in deployments]
    for svc in services:
        if not any(selects(svc["spec"].get("selector"), labels) for _, labels in pods):
            raise CheckError(f"Service {svc['metadata']['name']}: selects no Deployment's pods")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort")
            if isinstance(tp, str):
                ok = any(
                    tp in {cp.get("name") for c in d["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
                    for d, labels in pods
                    if selects(svc["spec"].get("selector"), labels)
                )
                if not ok:
                    raise CheckError(f"Service {svc['metadata']['name']}: targetPort {tp} is no container port")
    dep_names = {d["metadata"]["name"] for d in deployments}
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in dep_names:
            raise CheckError(f"HPA {hpa['metadata']['name']}: scales missing {ref['kind']} {ref['name']}")
        down = hpa["spec"].get("behavior", {}).get("scaleDown", {})
        if down.get("stabilizationWindowSeconds", 300) < 600:
            raise CheckError(f"HPA {hpa['metadata']['name']}: scale-down window under 10 minutes")
        for dep in deployments:
            if dep["metadata"]["name"] == ref["name"] and "replicas" in dep["spec"]:
                raise CheckError(f"Deployment {ref['name']}: sets replicas although an HPA owns them")
    container_ports = {
        cp.get("name") for d, _ in pods for c in d["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])
    }
    for np in by_kind(docs, "NetworkPolicy"):
        where = f"NetworkPolicy {np['metadata']['name']}"
        sel = np["spec"]["podSelector"].get("matchLabels")
        if not sel or not any(selects(sel, labels) for _, labels in pods):
            raise CheckError(f"{where}: selects no Deployment's pods")
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p.get("port"), str) and p["port"] not in container_ports:
                    raise CheckError(f"{where}: ingress port {p['port']!r} is no container port")
    service_ports = {(s["metadata"]["name"], p.get("name")) for s in services for p in s["spec"]["ports"]}
    service_ports |= {(s["metadata"]["name"], p["port"]) for s in services for p in s["spec"]["ports"]}
    for ing in by_kind(docs, "Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                svc = path["backend"]["service"]
                port = svc["port"].get("name", svc["port"].get("number"))
                if (svc["name"], port) not in service_ports:
                    raise CheckError(f"Ingress {ing['metadata']['name']}: backend {svc['name']}:{port} is no Service port")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"].get("matchLabels")
        if not sel or not any(selects(sel, labels) for _, labels in pods):
            raise CheckError(f"PDB {pdb['metadata']['name']}: selects no pods")
    for sm in by_kind(docs, "ServiceMonitor"):
        where = f"ServiceMonitor {sm['metadata']['name']}"
        spec = sm["spec"]
        allowed = {"selector", "endpoints", "jobLabel", "namespaceSelector", "podTargetLabels", "targetLabels"}
        if set(spec) - allowed:
            raise CheckError(f"{where}: unexpected spec fields {sorted(set(spec) - allowed)}")
        matched = [s for s in services if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not matched:
            raise CheckError(f"{where}: selects no Service")
        for ep in spec["endpoints"]:
            extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}
            if extra:
                raise CheckError(f"{where}: unexpected endpoint fields {sorted(extra)}")
            for s in matched:
                if ep["port"] not in {p.get("name") for p in s["spec"]["ports"]}:
                    raise CheckError(f"{where}: Service {s['metadata']['name']} has no port {ep['port']}")
    rules = by_kind(docs, "PrometheusRule")
    known = documented_metrics()
    groups = []
    for pr in rules:
        spec = pr["spec"]
        if set(spec) != {"groups"}:
            raise CheckError(f"PrometheusRule {pr['metadata']['name']}: spec must hold only groups")
        for g in spec["groups"]:
            for r in g["rules"]:
                check_metric_refs(f"PrometheusRule {r.get('alert') or r.get('record')}", str(r["expr"]), known)
        groups.extend(spec["groups"])
    if rules_out:
        with open(rules_out, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    print(
        f"{len(docs)} object(s) consistent: {len(deployments)} Deployment(s), {len(services)} Service(s), "
        f"{len(rules)} PrometheusRule(s) with {sum(len(g['rules']) for g in groups)} rule(s)"
    )


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(path):
    try:
        dash = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckError(f"{path}: not JSON: {e}") from e
    known = documented_metrics()
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            raise CheckError(f"{path}: no `{key}`")
    exprs = 0
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and q:
            m = re.match(r"label_values\((.*),\s*\w+\)\s*$", q)
            check_metric_refs(f"{path} variable {var['name']}", m.group(1) if m else q, known)
    ids = set()
    for p in walk_panels(dash["panels"]):
        if p.get("id") in ids:
            raise CheckError(f"{path}: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            raise CheckError(f"{path}: panel {p.get('title')!r} has no query")
        for t in targets:
            check_metric_refs(f"{path} panel {p.get('title')!r}", t["expr"], known)
            exprs += 1
    print(f"{path}: {len(ids)} panel(s), {exprs} query(ies), all on documented metrics")


def main(argv):
    try:
        if argv[:1] == ["split"] and len(argv) == 4:
            cmd_split(*argv[1:])
        elif argv[:1] == ["objects"] and len(argv) >= 2:
            rules_out = None
            if "--rules-out" in argv:
                rules_out = argv[argv.index("--rules-out") + 1]
            check_objects(argv[1], "--secrets-external" in argv, rules_out)
        elif argv[:1] == ["dashboard"] and len(argv) == 2:
            check_dashboard(argv[1])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckError as e:
        print(f"k8s-check: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
