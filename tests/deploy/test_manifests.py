"""The deployment files of ``deploy/``, checked offline (Docker and a cluster are not available on the dev machines).

* Kubernetes: every document of every ``deploy/k8s/**.yaml`` validates against the bundled Kubernetes JSON schemas
  of ``kubernetes-validate`` for one pinned version, strictly (an unknown field is an error); kustomizations list
  existing files; selectors, Services, ports, volumes, ConfigMap / Secret references and ``$(VAR)`` expansions
  resolve; the ranking service has its probes and its HorizontalPodAutoscaler.
* Compose: ``deploy/compose.yaml`` (interpolated like ``docker compose`` does) validates against the vendored
  Compose Specification schema (``schemas/compose-spec.json``, see ``schemas/README.md``); ``depends_on`` targets
  exist and are health-checked where a condition needs it; named volumes are declared.
* Both: every ``recsys`` command line parses with the real CLI parser, the two deployments run the same commands
  and the same platform configuration (which ``recsys.config.load_config`` accepts), and the models the training
  jobs register are the ones the service loads.

The ``*_problems`` helpers return a list of findings; ``test_the_checks_reject_broken_manifests`` feeds them broken
copies so that a validator that silently accepts everything fails the suite.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from recsys.cli import build_parser
from recsys.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

#: the Kubernetes version every manifest is validated against (kubernetes-validate bundles 1.25 ... 1.37)
K8S_VERSION = "1.31.0"
NAMESPACE = "recsys"
#: the platform image (deploy/Dockerfile, entrypoint `recsys`); kuailive-recsys-mlflow is the tracking server
PLATFORM_IMAGE = "kuailive-recsys"
#: what `docker compose` would read from deploy/.env (the secrets have no defaults)
COMPOSE_ENV = {"POSTGRES_PASSWORD": "test-password", "RECSYS_ADMIN_TOKEN": "test-token"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
#: component (k8s workload name == compose service name) -> its k8s kind: the same `recsys` command line in both
COMPONENTS = {
    "ranking": "Deployment", "stream-worker": "Deployment", "tpp-stream": "Deployment", "replay": "Job",
    "train-retrieval": "Job", "train-ranker": "Job", "train-allocator": "Job",
}
EXPECTED_K8S_FILES = {
    "namespace.yaml", "configmap.yaml", "secret.yaml", "data.yaml", "kafka.yaml", "redis.yaml", "postgres.yaml",
    "mlflow.yaml", "ranking-service.yaml", "stream-workers.yaml", "tpp-stream.yaml", "kustomization.yaml",
    "jobs/kustomization.yaml", "jobs/data-synth.yaml", "jobs/train-retrieval.yaml", "jobs/train-ranker.yaml",
    "jobs/train-allocator.yaml", "jobs/replay.yaml",
}


# ============================================================================================== loading
def load_docs(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/k8s (kustomization files are not API objects)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@cache
def _all_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((str(p.relative_to(K8S)), d) for p in manifest_files() for d in load_docs(p))


def all_docs() -> list[dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s (deep copies: tests may not change each other's view)."""
    return [copy.deepcopy(d) for _, d in _all_docs()]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
    assert len(hits) == 1, f"expected one {kind} {name!r}, found {len(hits)}"
    return hits[0]


def pod_template(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (CronJob: of its job template), else None."""
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if doc.get("kind") in WORKLOAD_KINDS:
        return doc["spec"]["template"]
    return None


def containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    tpl = pod_template(doc)
    if tpl is None:
        return []
    spec = tpl["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def is_platform_image(image: str) -> bool:
    """``[registry/...]kuailive-recsys:TAG`` (not the kuailive-recsys-mlflow image)."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0] == PLATFORM_IMAGE


@cache
def _compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_raw() -> dict[str, Any]:
    """deploy/compose.yaml as written (anchors and merge keys resolved, ``${VAR}`` not interpolated)."""
    return copy.deepcopy(_compose_raw())


def compose_doc(env: Mapping[str, str] = COMPOSE_ENV) -> dict[str, Any]:
    """deploy/compose.yaml interpolated with ``env``, the model `docker compose` validates."""
    return interpolate(compose_raw(), env)


# ============================================================================================== compose interpolation
class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (docker compose refuses to start)."""


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}`` in every string value (mapping keys are left alone, like compose)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["braced"] or m["bare"], m["op"], m["arg"] or ""
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if unset else str(val)
        if op in (":?", "?"):
            if unset:
                raise InterpolationError(f"{name}: {arg or 'required variable is not set'}")
            return str(val)
        return "" if val is None else str(val)

    return _VAR.sub(sub, value)


# ============================================================================================== the checks
def k8s_schema_problems(doc: Mapping[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Strict validation of one object against the Kubernetes ``version`` schema (no schema is a problem too)."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return [f"{where}: {exc.message}"]
    return []


@cache
def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def compose_schema_problems(doc: Mapping[str, Any]) -> list[str]:
    """Validation of a (interpolated) compose model against the Compose Specification schema."""
    errors = sorted(_compose_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def recsys_argv_problem(argv: list[str]) -> str | None:
    """None when ``recsys <argv>`` parses with the real CLI parser, else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit:
        return f"recsys {' '.join(argv)}: {err.getvalue().strip().splitlines()[-1] if err.getvalue() else 'exit'}"
    return None


def parse_recsys(argv: list[str]) -> Any:
    problem = recsys_argv_problem(argv)
    assert problem is None, problem
    return build_parser().parse_args(argv)


def selector_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Each Deployment / StatefulSet / DaemonSet selector must match its own pod template's labels."""
    out = []
    for d in docs:
        if d.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        name = d["metadata"]["name"]
        selector = d["spec"].get("selector", {})
        match = selector.get("matchLabels", {})
        labels = d["spec"]["template"].get("metadata", {}).get("labels", {})
        if not match:
            out.append(f"{d['kind']}/{name}: empty selector.matchLabels")
        if selector.get("matchExpressions"):
            out.append(f"{d['kind']}/{name}: matchExpressions are not checked here; use matchLabels")
        for k, v in match.items():
            if labels.get(k) != v:
                out.append(f"{d['kind']}/{name}: selector {k}={v} does not match template label {labels.get(k)!r}")
    return out


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Each Service selects some workload's pod labels and its target ports exist on those pods."""
    out = []
    workloads = [d for d in docs if pod_template(d) is not None]
    for svc in (d for d in docs if d.get("kind") == "Service"):
        name, selector = svc["metadata"]["name"], svc["spec"].get("selector", {})
        targets = [w for w in workloads if _selects(selector, pod_template(w).get("metadata", {}).get("labels", {}))]
        if not targets:
            out.append(f"Service/{name}: selector {selector} matches no workload's pod labels")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w in targets:
                ports = [p for c in containers(w) for p in c.get("ports", [])]
                if not any(target in (p.get("name"), p["containerPort"]) for p in ports):
                    out.append(f"Service/{name}: targetPort {target!r} is not a port of {w['kind']}/"
                               f"{w['metadata']['name']}")
    return out


def _probe_port(probe: Mapping[str, Any]) -> Any:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            return probe[handler]["port"]
    return None


def reference_problems(docs: list[dict[str, Any]]) -> list[str]:
    """ConfigMap / Secret / PVC / volume / port / ``$(VAR)`` references of every pod resolve."""
    out = []
    configmaps = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
               for d in docs if d["kind"] == "Secret"}
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for d in docs:
        tpl = pod_template(d)
        if tpl is None:
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        spec = tpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claim_templates = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in pvcs:
                out.append(f"{where}: volume {v['name']} claims the unknown PVC {claim!r}")
        for c in containers(d):
            cw = f"{where} container {c['name']}"
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claim_templates:
                    out.append(f"{cw}: volumeMount {mount['name']!r} has no volume")
            for src in c.get("envFrom", []):
                if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                    out.append(f"{cw}: envFrom the unknown ConfigMap {src['configMapRef']['name']!r}")
                if "secretRef" in src and src["secretRef"]["name"] not in secrets:
                    out.append(f"{cw}: envFrom the unknown Secret {src['secretRef']['name']!r}")
            defined: list[str] = []
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                for key, known in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                    if key in ref and ref[key]["key"] not in known.get(ref[key]["name"], set()):
                        out.append(f"{cw}: env {e['name']} refers to the missing {key} "
                                   f"{ref[key]['name']}/{ref[key]['key']}")
                for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                    if var not in defined:
                        out.append(f"{cw}: env {e['name']} expands $({var}), not defined before it")
                defined.append(e["name"])
            for arg in list(c.get("command", [])) + list(c.get("args", [])):
                for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    if var not in defined:
                        out.append(f"{cw}: command line expands $({var}), not named in the container's env")
            port_names = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = _probe_port(c.get(probe, {}))
                if port is not None and port not in port_names:
                    out.append(f"{cw}: {probe} port {port!r} is not a container port")
    return out


def depends_on_problems(doc: Mapping[str, Any]) -> list[str]:
    """Compose: depends_on targets exist; ``service_healthy`` targets have a healthcheck."""
    out = []
    services = doc.get("services", {})
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            if dep not in services:
                out.append(f"service {name}: depends_on the unknown service {dep!r}")
            elif spec.get("condition") == "service_healthy" and not services[dep].get("healthcheck"):
                out.append(f"service {name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            elif set(services[dep].get("profiles", [])) - set(svc.get("profiles", [])) and \
                    services[dep].get("profiles"):
                out.append(f"service {name}: depends on {dep}, which only runs under profiles "
                           f"{services[dep]['profiles']}")
    return out


def compose_argv(svc: Mapping[str, Any]) -> list[str]:
    command = svc["command"]
    assert isinstance(command, list), "write platform commands as YAML lists (no shell word splitting)"
    return [str(a) for a in command]


def k8s_argv(container: Mapping[str, Any]) -> list[str]:
    """The `recsys` arguments of a platform container (its image's entrypoint is `recsys`)."""
    command = list(container.get("command", []))
    assert command in ([], ["recsys"]), f"{container['name']}: command {command} is not the `recsys` entrypoint"
    return [str(a) for a in container.get("args", [])]


def platform_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in all_docs():
        for c in containers(d):
            if is_platform_image(c["image"]):
                yield d, c


def normalised(argv: list[str]) -> list[str]:
    """``$(VAR)`` (Kubernetes) and ``${VAR...}`` (compose) both as ``<VAR>``."""
    return [re.sub(r"\$\(([A-Za-z0-9_]+)\)|\$\{([A-Za-z0-9_]+)[^}]*\}", lambda m: f"<{m[1] or m[2]}>", a)
            for a in argv]


# ============================================================================================== Kubernetes
def test_the_k8s_layout_has_one_file_per_component() -> None:
    found = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")}
    assert EXPECTED_K8S_FILES <= found, f"missing: {sorted(EXPECTED_K8S_FILES - found)}"


def test_the_pinned_kubernetes_version_is_bundled() -> None:
    # kubernetes-validate falls back to an older schema for an unknown version: pin one it really has
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_k8s_document_validates_strictly(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no documents"
    problems = [p for d in docs for p in k8s_schema_problems(d)]
    assert not problems, "\n".join(problems)


def test_every_object_is_in_the_platform_namespace() -> None:
    for d in all_docs():
        meta = d["metadata"]
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{d['kind']}/{meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace") == NAMESPACE, f"{d['kind']}/{meta['name']}: namespace {meta.get('namespace')}"
    assert find(all_docs(), "Namespace", NAMESPACE)


@pytest.mark.parametrize("path", kustomization_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_existing_files_and_nothing_is_left_out(path: Path) -> None:
    k = yaml.safe_load(path.read_text())
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert k.get("namespace") == NAMESPACE
    resources = k["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    for r in resources:
        target = path.parent / r
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: resource {r} does not exist"
    siblings = {p.name for p in path.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert siblings <= set(resources), f"{path}: not listed: {sorted(siblings - set(resources))}"


def test_workload_selectors_match_their_pod_labels() -> None:
    assert not selector_problems(all_docs())


def test_every_service_selects_a_workload_and_its_ports() -> None:
    assert not service_problems(all_docs())


def test_statefulsets_are_governed_by_existing_services() -> None:
    docs = all_docs()
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        svc = find(docs, "Service", sts["spec"]["serviceName"])
        assert _selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    headless = find(docs, "Service", "kafka-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_configmap_secret_volume_port_and_variable_references_resolve() -> None:
    problems = reference_problems(all_docs())
    assert not problems, "\n".join(problems)


def test_pods_get_no_service_link_variables() -> None:
    """Service links would put KAFKA_PORT (read as a broker property by the Kafka image) and MLFLOW_PORT (read by
    `mlflow server --port`) into the pods."""
    for d in all_docs():
        if pod_template(d) is not None:
            assert pod_template(d)["spec"].get("enableServiceLinks") is False, f"{d['kind']}/{d['metadata']['name']}"


def test_the_secret_is_a_template_with_placeholders() -> None:
    secret = find(all_docs(), "Secret", "recsys-secrets")
    assert set(secret["stringData"]) == {"POSTGRES_PASSWORD", "RECSYS_ADMIN_TOKEN"}
    assert all(v.startswith("CHANGE-ME") for v in secret["stringData"].values()), "never commit real secrets"


def test_the_platform_config_is_accepted_by_recsys_config() -> None:
    data = find(all_docs(), "ConfigMap", "recsys-env")["data"]
    cfg = load_config(environ=data)  # pydantic: an unknown section or field fails here
    assert cfg.services.kafka_bootstrap == "kafka:9092"
    assert cfg.services.redis_url == "redis://redis:6379/0"
    assert cfg.tracking.tracking_uri == "http://mlflow:5000"
    assert str(cfg.data.data_dir) == "/data/kuailive"


def test_the_ranking_service_has_probes_resources_metrics_and_an_hpa() -> None:
    docs = all_docs()
    dep = find(docs, "Deployment", "ranking")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = parse_recsys(k8s_argv(c))
    assert args.command == "serve" and args.host == "0.0.0.0" and ports["http"] == args.port == 8000
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert ports.get(get["port"], get["port"]) == 8000
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"resources.{kind} needs cpu and memory"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    assert "replicas" not in dep["spec"], "the HorizontalPodAutoscaler owns the replica count"

    hpa = find(docs, "HorizontalPodAutoscaler", "ranking")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ranking"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]

    svc = find(docs, "Service", "ranking")
    assert _selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    env = {e["name"]: e for e in c["env"]}
    assert env["RECSYS_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "recsys-secrets"
    assert args.admin_token is None, "the admin token stays out of the command line (RECSYS_ADMIN_TOKEN)"


def test_every_recsys_command_line_in_k8s_parses() -> None:
    seen = set()
    for d, c in platform_containers():
        problem = recsys_argv_problem(k8s_argv(c))
        assert problem is None, f"{d['kind']}/{d['metadata']['name']}: {problem}"
        seen.add(d["metadata"]["name"])
    assert set(COMPONENTS) <= seen


def test_stream_workers_fit_the_partitions_and_never_stop_on_idle() -> None:
    dep = find(all_docs(), "Deployment", "stream-worker")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = parse_recsys(k8s_argv(c))
    assert args.command == "ingest" and args.consume and not args.produce and args.store == "redis"
    assert 1 <= dep["spec"]["replicas"] <= args.partitions, "workers beyond the partition count sit idle"
    assert math.isinf(args.idle_timeout), "a long-running worker must not exit when the stream is quiet"
    tpp = parse_recsys(k8s_argv(find(all_docs(), "Deployment", "tpp-stream")["spec"]["template"]["spec"]
                                 ["containers"][0]))
    assert tpp.stream and math.isinf(tpp.idle_timeout) and tpp.group != args.group


def test_jobs_never_restart_in_place_and_read_the_dataset_read_only() -> None:
    for d in all_docs():
        if d["kind"] != "Job":
            continue
        name, spec = d["metadata"]["name"], d["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        (c,) = spec["containers"]
        args = parse_recsys(k8s_argv(c))
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        if getattr(args, "data", None):  # readers of the dataset
            assert args.data in mounts and mounts[args.data].get("readOnly"), f"Job/{name}: --data not mounted ro"
        else:  # the writer (data synth --out)
            assert args.out in mounts and not mounts[args.out].get("readOnly"), f"Job/{name}: --out not writable"


# ============================================================================================== Compose
def test_the_vendored_compose_schema_is_the_documented_file() -> None:
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == COMPOSE_SCHEMA_SHA256
    assert (SCHEMAS / "LICENSE.compose-spec").is_file()


def test_compose_file_validates_against_the_compose_spec() -> None:
    problems = compose_schema_problems(compose_doc())
    assert not problems, "\n".join(problems)


def test_compose_has_no_default_secrets() -> None:
    for missing in COMPOSE_ENV:
        env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
        with pytest.raises(InterpolationError, match=missing):
            compose_doc(env)


def test_compose_depends_on_and_volumes_resolve() -> None:
    doc = compose_doc()
    assert not depends_on_problems(doc)
    declared = set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        for v in svc.get("volumes", []):
            if isinstance(v, dict):
                kind, source = v["type"], v.get("source", "")
            else:
                source = v.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "volume":
                assert source in declared, f"service {name}: volume {source!r} is not declared"
            elif kind == "bind":
                assert v.get("read_only") if isinstance(v, dict) else v.endswith(":ro"), \
                    f"service {name}: bind mounts of host data are read-only"


def test_compose_profiles_and_replicas() -> None:
    services = compose_doc()["services"]
    always = {n for n, s in services.items() if not s.get("profiles")}
    assert {"kafka", "redis", "postgres", "mlflow", "stream-worker"} <= always
    assert services["ranking"]["profiles"] == ["serving"]
    assert services["replay"]["profiles"] == ["replay"]
    for job in ("train-retrieval", "train-ranker", "train-allocator"):
        assert services[job]["profiles"] == ["training"]
    worker = parse_recsys(compose_argv(services["stream-worker"]))
    assert 1 <= services["stream-worker"]["deploy"]["replicas"] <= worker.partitions
    for name, svc in services.items():
        assert "container_name" not in svc, f"{name}: a fixed container name prevents scaling"


def test_every_recsys_command_line_in_compose_parses() -> None:
    services = compose_doc()["services"]
    platform = {n for n, s in services.items() if is_platform_image(s.get("image", ""))}
    assert set(COMPONENTS) <= platform
    for name in platform:
        problem = recsys_argv_problem(compose_argv(services[name]))
        assert problem is None, f"service {name}: {problem}"
    health = services["ranking"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(health)


# ============================================================================================== both
def test_compose_and_k8s_run_the_same_commands() -> None:
    docs, services = all_docs(), compose_raw()["services"]
    for name, kind in COMPONENTS.items():
        (c,) = find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
        assert normalised(compose_argv(services[name])) == normalised(k8s_argv(c)), f"{name} differs"


def test_compose_and_k8s_share_the_platform_config() -> None:
    configmap = find(all_docs(), "ConfigMap", "recsys-env")["data"]
    env = compose_raw()["services"]["stream-worker"]["environment"]
    assert set(env) == set(configmap)
    interpolated = interpolate(env, COMPOSE_ENV)
    assert {k: str(v) for k, v in interpolated.items()} == {k: str(v) for k, v in configmap.items()}
    load_config(environ={k: str(v) for k, v in interpolated.items()})


def test_kafka_addresses_agree_with_the_configured_bootstrap() -> None:
    bootstrap = find(all_docs(), "ConfigMap", "recsys-env")["data"]["RECSYS_SERVICES__KAFKA_BOOTSTRAP"]
    argvs = [k8s_argv(c) for _, c in platform_containers()]
    argvs += [compose_argv(s) for s in compose_doc()["services"].values() if is_platform_image(s.get("image", ""))]
    for argv in argvs:
        args = parse_recsys(argv)
        if getattr(args, "kafka", None) is not None:
            assert args.kafka == bootstrap, argv
        if getattr(args, "decision_log", None):
            assert args.decision_log.startswith(f"kafka://{bootstrap}/"), argv


def test_the_service_loads_what_the_training_jobs_register() -> None:
    docs = all_docs()
    serve = parse_recsys(k8s_argv(find(docs, "Deployment", "ranking")["spec"]["template"]["spec"]["containers"][0]))
    for job, flag in (("train-retrieval", "retriever"), ("train-ranker", "ranker")):
        train = parse_recsys(k8s_argv(find(docs, "Job", job)["spec"]["template"]["spec"]["containers"][0]))
        assert getattr(serve, flag) == f"models:/{train.register}@{train.alias}", f"{job} -> --{flag}"


# ============================================================================================== the checks fail
def test_the_checks_reject_broken_manifests(tmp_path: Path) -> None:
    docs = all_docs()
    dep = find(docs, "Deployment", "ranking")

    # a Deployment with an unknown field, written to a file and read back like the real manifests
    broken = copy.deepcopy(dep)
    broken["spec"]["replicaz"] = 3
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all([broken]))
    problems = [p for d in load_docs(path) for p in k8s_schema_problems(d)]
    assert problems and any("replicaz" in p or "httpGett" in p for p in problems), problems
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert k8s_schema_problems(wrong_type)
    assert k8s_schema_problems({"apiVersion": "example.com/v1", "kind": "NoSuchKind", "metadata": {"name": "x"}})

    # a selector that misses its template, a Service that selects nothing, a dangling reference
    mismatched = copy.deepcopy(dep)
    mismatched["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "rankin"
    assert selector_problems([mismatched])
    orphan = copy.deepcopy(find(docs, "Service", "ranking"))
    orphan["spec"]["selector"] = {"app.kubernetes.io/name": "nobody"}
    assert service_problems(docs + [orphan])
    dangling = copy.deepcopy(dep)
    dangling["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]["key"] = "NOPE"
    dangling["spec"]["template"]["spec"]["containers"][0]["args"].append("--k1=$(UNDEFINED)")
    assert len(reference_problems([d for d in docs if d is not dep] + [dangling])) == 2

    # a compose service with a bad key, a bad healthcheck key, and a dependency on nothing
    compose = compose_doc()
    compose["services"]["redis"]["restart_policy"] = "always"
    compose["services"]["kafka"]["healthcheck"]["intervall"] = "5s"
    problems = compose_schema_problems(compose)
    assert any("restart_policy" in p for p in problems) and any("intervall" in p for p in problems)
    compose = compose_doc()
    compose["services"]["stream-worker"]["depends_on"]["zookeeper"] = {"condition": "service_healthy"}
    assert depends_on_problems(compose)

    # a recsys command line the CLI does not accept
    assert recsys_argv_problem(["ingest", "--consume", "--replicas", "3"])
    assert recsys_argv_problem(["serve", "--port", "8000"])  # --retriever is required
