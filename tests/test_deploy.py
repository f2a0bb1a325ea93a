"""The deployment files agree with each other and with the service: Kubernetes manifests, Dockerfile,
compose.yaml, Prometheus, systemd, the Procfile.

Fast and offline: no Docker, no schemas (``.ci/check-deploy`` validates against the Kubernetes and Compose
schemas and builds the image where Docker runs). Needs PyYAML; skipped without it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from service.agents import parse_agents
from service.config import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
SECRET_KEYS = {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "STREAM_TOKEN_SECRET", "DATABASE_URL"}
END_MARGIN_S = 10  # at least this long after the drain to end the last calls politely


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource under infra/k8s (kustomization.yaml aside), by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def one(kind: str) -> dict[str, Any]:
    docs = [doc for (k, _), doc in manifests().items() if k == kind]
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def config_data() -> dict[str, str]:
    data: dict[str, str] = manifests()[("ConfigMap", "dialtone-config")]["data"]
    return data


def compose_default(value: object) -> str:
    """``${NAME:-default}`` -> ``default`` (compose interpolation without the variable set)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def seconds(duration: str) -> float:
    """A compose duration (``75s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def http_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p.get("name") == port)


# --- Kubernetes ----------------------------------------------------------------------------------


def test_manifests_parse_and_are_namespace_agnostic() -> None:
    found = manifests()
    kinds = {kind for kind, _ in found}
    expected = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
    assert kinds >= expected | {"HorizontalPodAutoscaler"}
    for (kind, name), doc in found.items():
        assert doc.get("apiVersion"), (kind, name)
        assert "namespace" not in doc["metadata"], f"{kind}/{name} sets a namespace"
    assert one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == {name for name in files if not name.endswith(".example.yaml")}
    assert "secret.example.yaml" in files  # the Secret is an example, never applied from the repository


def test_probes_readiness_on_readyz_and_liveness_on_healthz() -> None:
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert http_port(c, c[probe]["httpGet"]["port"]) == 8080
    # A restart ends every call on the pod: liveness gives a busy process more slack than readiness.
    live, ready = c["livenessProbe"], c["readinessProbe"]
    live_s = live["periodSeconds"] * live["failureThreshold"]
    assert live_s > ready["periodSeconds"] * ready["failureThreshold"]


def test_grace_period_covers_prestop_drain_and_margin() -> None:
    spec, c = pod_spec(), container()
    drain_s = int(config_data()["DRAIN_TIMEOUT_S"])
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    assert 1 <= pre_stop_s <= 30
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= drain_s
    assert grace >= pre_stop_s + drain_s + END_MARGIN_S


def test_env_comes_from_the_configmap_and_the_secret() -> None:
    found, c = manifests(), container()
    refs = c["envFrom"]
    config_names = [r["configMapRef"]["name"] for r in refs if "configMapRef" in r]
    secret_names = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
    assert config_names == ["dialtone-config"] and ("ConfigMap", "dialtone-config") in found
    assert secret_names == ["dialtone-secrets"] and ("Secret", "dialtone-secrets") in found
    secret = found[("Secret", "dialtone-secrets")]
    assert set(secret["stringData"]) >= SECRET_KEYS
    assert not SECRET_KEYS & set(config_data()), "secrets (and DATABASE_URL's password) belong in the Secret"
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql://")  # replicas share PostgreSQL


def test_example_configuration_is_accepted_by_the_service() -> None:
    secret = manifests()[("Secret", "dialtone-secrets")]["stringData"]
    env = {**config_data(), **secret}
    for item in container().get("env", []):
        env[item["name"]] = item["value"]
    settings = Settings.from_env(env)  # raises ConfigError listing every problem
    assert settings.port == 8080
    assert settings.workers == 1


def test_agents_configmap_is_mounted_where_agents_file_points_and_parses() -> None:
    agents_file = Path(config_data()["AGENTS_FILE"])
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    mount = mounts[str(agents_file.parent)]
    assert "subPath" not in mount, "a subPath mount is never updated: the agents would not reload"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    cm = manifests()[("ConfigMap", volume["configMap"]["name"])]
    book = parse_agents(cm["data"][agents_file.name], source="agents-configmap.yaml")
    assert book.by_key("default") is not None


def test_selectors_match_the_pods() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selected = deployment["spec"]["selector"]["matchLabels"]
    assert selected.items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selected
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    service_port = one("Service")["spec"]["ports"][0]
    assert http_port(container(), service_port["targetPort"]) == 8080


def test_resources_capacity_and_autoscaling() -> None:
    c, data = container(), config_data()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()
    limit = c["resources"]["limits"]["cpu"]
    cores = int(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
    assert int(data["WORKERS"]) <= max(1, int(cores)), "WORKERS: one process per core of the CPU limit"
    assert int(data["MAX_CALLS"]) >= 1
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert one("PodDisruptionBudget")["spec"].get("maxUnavailable", 0) < hpa["minReplicas"]


def test_pod_is_non_root_with_a_writable_tmp() -> None:
    spec, c = pod_spec(), container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    if c["securityContext"].get("readOnlyRootFilesystem"):
        # hypercorn listens on a Unix socket under /tmp (service/web/serving.py)
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_ingress_example_routes_twilio_with_long_timeouts() -> None:
    ingress = one("Ingress")
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/twilio/"]  # /metrics and /readyz stay inside the cluster
    assert ingress["spec"]["tls"]
    host = ingress["spec"]["rules"][0]["host"]
    assert config_data()["PUBLIC_BASE_URL"] == f"https://{host}"
    timeout = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
    assert int(timeout) >= 3600  # a call lasts up to an hour


# --- Dockerfile ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(v for k, v in instructions if k == "ARG")))
    stages = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    final = instructions[stages[-1] :]
    base = final[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == "python:3.11-slim"
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [v for k, v in final if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert "curl" not in healthchecks[0] and "wget" not in healthchecks[0]  # neither is in the slim image
    assert [v for k, v in final if k == "EXPOSE"] == ["8080"]
    env = " ".join(v for k, v in final if k == "ENV")
    assert "PORT=8080" in env and "PYTHONUNBUFFERED=1" in env
    assert [v for k, v in final if k == "CMD"] == ['["python", "-m", "service.serve"]']
    # The image's uid is the one the Deployment runs as.
    assert users[-1].split(":")[0] == str(pod_spec()["securityContext"]["runAsUser"])


def test_dockerignore_is_a_whitelist_that_keeps_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not included & {".env", ".venv", ".git", "tests", "fixtures", "out", "recordings"}
    for kind, value in dockerfile_instructions():
        if kind == "COPY" and not value.startswith("--from"):
            sources = shlex.split(value)[:-1]
            for source in sources:
                assert source.rstrip("/") in included, f"COPY {source}: excluded by .dockerignore"
                assert (ROOT / source).exists()


# --- compose, Prometheus, systemd, Procfile --------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def test_compose_runs_dialtone_postgres_and_prometheus() -> None:
    services = compose()["services"]
    assert {"dialtone", "postgres", "prometheus"} <= services.keys()
    dialtone = services["dialtone"]
    assert dialtone["build"] == "."
    assert dialtone["env_file"] == ".env"
    assert dialtone["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    url = compose_default(dialtone["environment"]["DATABASE_URL"])
    assert re.fullmatch(r"postgresql://dialtone:[^@]+@postgres:5432/dialtone", url), url
    drain_s = int(compose_default(dialtone["environment"]["DRAIN_TIMEOUT_S"]))
    assert seconds(compose_default(dialtone["stop_grace_period"])) >= drain_s + END_MARGIN_S


def test_prometheus_scrapes_dialtone_metrics() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if isinstance(v, str)}
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert (ROOT / config_path).resolve() == ROOT / "infra" / "prometheus.yml"
    config = yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "dialtone")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "dialtone:8080" in [t for sc in job["static_configs"] for t in sc["targets"]]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_systemd_unit_and_procfile_run_the_same_server() -> None:
    assert (ROOT / "Procfile").read_text(encoding="utf-8").strip() == "web: python -m service.serve"
    unit = (ROOT / "infra" / "dialtone.service").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.MULTILINE))
    assert settings["ExecStart"].endswith("python -m service.serve")
    assert settings["KillMode"] == "mixed"  # SIGTERM to the supervisor only, which passes it on once
    assert int(settings["TimeoutStopSec"]) >= int(config_data()["DRAIN_TIMEOUT_S"]) + END_MARGIN_S
