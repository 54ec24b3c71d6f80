"""Offline checks of the deployment artefacts (Dockerfile, compose, Prometheus, Grafana, k8s).

Nothing here needs Docker or Kubernetes. The artefacts are checked against the code they deploy:
settings names and defaults come from ``Settings``, metric names from a ``Metrics()`` built on a
fresh registry, package names from ``pyproject.toml``; alert rules go through ``promtool``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from service import __version__
from service.metrics import Metrics
from service.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROM_DIR = DEPLOY / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "sluice-dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = DEPLOY / "requirements.lock"

SETTING_NAMES = frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)
# Labels Prometheus adds to every scraped series (and `le` of histogram buckets).
TARGET_LABELS = frozenset({"instance", "job", "le"})
# Public images the local setup may pull; the tag must be explicit and not `latest`.
PUBLIC_IMAGE_REPOS = frozenset({"apache/kafka", "prom/prometheus", "grafana/grafana", "python"})
# Topics the jobs read and write: the product's names, plus any `*_topic` setting's default.
JOB_TOPICS = frozenset({"lines", "events", "word-counts", "rollups", "dead-letters"}) | {
    str(info.default) for name, info in Settings.model_fields.items() if name.endswith("_topic")
}


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _default(field: str) -> Any:
    info = Settings.model_fields[field]
    return info.get_default(call_default_factory=True)


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict) and services
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _sluice_services() -> dict[str, dict[str, Any]]:
    """Services that run the image built from this repository's Dockerfile."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _worker_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _sluice_services().items() if _command(s)[:1] == ["worker"]}


def _k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / resource).read_text()) if d)
    return docs


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def _one(kind: str) -> dict[str, Any]:
    found = _k8s(kind)
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def _configmap_env() -> dict[str, str]:
    return {str(k): str(v) for k, v in _one("ConfigMap")["data"].items()}


def _secret_env() -> dict[str, str]:
    return {str(k): str(v) for k, v in _one("Secret").get("stringData", {}).items()}


def _container() -> dict[str, Any]:
    containers = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# ---- Dockerfile ----------------------------------------------------------------------------


def _dockerfile() -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        instr, _, args = logical.partition(" ")
        logical = ""
        if instr.upper() == "FROM":
            stages.append([])
        assert stages, "Dockerfile must start with FROM"
        stages[-1].append((instr.upper(), args.strip()))
    return stages


def _instr(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instr, args in stage if instr == name]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r} is not the JSON exec form"
    return [str(v) for v in value]


def _dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _instr(stage, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=VALUE, got {args!r}"
            env[key] = value
    return env


def _copy_sources(stage: list[tuple[str, str]]) -> list[str]:
    sources: list[str] = []
    for args in _instr(stage, "COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(args)):
            continue
        sources.extend(parts[:-1])
    return sources


# ---- metrics and PromQL -----------------------------------------------------------------------


def _exposed_metrics() -> dict[str, frozenset[str]]:
    """Every sample name a worker's registry can expose, with the labels it carries."""
    metrics = Metrics(CollectorRegistry())
    exposed: dict[str, frozenset[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    for family in metrics.registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            exposed.setdefault(family.name + suffix, frozenset())
        for sample in family.samples:
            exposed.setdefault(sample.name, frozenset(sample.labels))
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            for name in list(exposed):
                if name == wrapper._name or name.startswith(wrapper._name + "_"):
                    exposed[name] = exposed[name] | frozenset(wrapper._labelnames)
    return exposed


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan"})


def _strip_promql(expr: str) -> str:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (function names, keywords and labels left out)."""
    text = _GROUPING.sub("", _strip_promql(expr))
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$:])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def promql_grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for match in _GROUPING.finditer(_strip_promql(expr)):
        labels.update(part.strip() for part in match.group(1).split(",") if part.strip())
    return labels


def test_promql_helpers_see_metrics_and_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{a="b{c}"}[5m]))) > 5 '
        "and on (instance) sum by (instance) (y) > 1e3 unless z offset 5m"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y", "z"}
    assert promql_grouping_labels(expr) == {"job", "le", "instance"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not on PATH (Debian package `prometheus`; .ci/run installs it)")
    return path


# ---------------------------------------------------------------------------------------------
# settings used by the artefacts
# ---------------------------------------------------------------------------------------------


def _all_sluice_env_names() -> set[str]:
    names: set[str] = set()
    for service in _services().values():
        names.update(k for k in _env(service) if k.startswith(ENV_PREFIX))
    names.update(_configmap_env())
    names.update(_secret_env())
    names.update(e["name"] for e in _container().get("env", []))
    for stage in _dockerfile():
        names.update(k for k in _dockerfile_env(stage) if k.startswith(ENV_PREFIX))
    return names


def test_every_sluice_env_var_is_a_settings_field() -> None:
    used = _all_sluice_env_names()
    assert {"SLUICE_BROKERS", "SLUICE_DATA_DIR", "SLUICE_SASL_PASSWORD"} <= used
    unknown = sorted(used - SETTING_NAMES)
    assert not unknown, f"not fields of Settings (typo, or renamed setting): {unknown}"


def _load_with(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    import os

    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_compose_sluice_env_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    final_env = _dockerfile_env(_dockerfile()[-1])
    services = _sluice_services()
    assert services
    for name, service in services.items():
        env = {k: v for k, v in final_env.items() if k.startswith(ENV_PREFIX)} | _env(service)
        settings = _load_with(monkeypatch, env)
        assert settings.brokers == ("kafka:9092",), name


def test_k8s_env_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with(monkeypatch, _configmap_env() | _secret_env())
    assert settings.sasl_password == "change-me"
    assert str(settings.data_dir) == "/var/lib/sluice"


# ---------------------------------------------------------------------------------------------
# images and the lock
# ---------------------------------------------------------------------------------------------


def _split_image(image: str) -> tuple[str, str]:
    repo, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag, f"{image!r} has no explicit tag"
    assert tag != "latest", f"{image!r}: pin a version, not latest"
    return repo, tag


def test_images_are_public_with_explicit_tags() -> None:
    pulled = {svc["image"] for svc in _services().values() if "build" not in svc}
    pulled.update(args.split()[0] for stage in _dockerfile() for args in _instr(stage, "FROM"))
    for image in pulled:
        repo, _ = _split_image(image)
        assert repo in PUBLIC_IMAGE_REPOS, f"{image!r} is not one of the known public images"
    assert "apache/kafka:3.9.1" in pulled
    assert _dockerfile()[-1][0][1] == "python:3.11-slim"


def test_own_image_tag_is_the_package_version() -> None:
    tags = {_split_image(svc["image"]) for svc in _sluice_services().values()}
    tags.add(_split_image(_container()["image"]))
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    tags.update((i["newName"], i["newTag"]) for i in kustomization["images"])
    assert tags == {("sluice", __version__)}


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_runtime_dependency_and_no_dev_tool() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock()
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {spec!r}"
    for spec in pyproject["project"]["optional-dependencies"]["dev"]:
        name = canonicalize_name(Requirement(spec).name)
        assert name not in pins, f"dev tool {name} must not be in the image's lock"


def test_lock_is_closed_under_the_installed_requirements() -> None:
    """Every requirement of a locked package is locked too (the image installs with --no-deps)."""
    pins = _lock()
    missing: set[str] = set()
    for name in pins:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            req = Requirement(spec)
            applies = req.marker is None or req.marker.evaluate({"extra": ""})
            if applies and canonicalize_name(req.name) not in pins:
                missing.add(f"{req.name} (needed by {name})")
    assert not missing, f"not pinned in {LOCK.name}: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ---------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_the_specified_runtime() -> None:
    stages = _dockerfile()
    assert len(stages) >= 2, "builder stage + runtime stage"
    builder, final = stages[0], stages[-1]
    assert " AS " in builder[0][1].upper()
    assert "deploy/requirements.lock" in _copy_sources(builder)
    assert any("--no-deps" in a and "pip install" in a for a in _instr(builder, "RUN"))
    assert _instr(final, "COPY") and all("--from=" in a for a in _instr(final, "COPY"))

    assert [_exec_form(a) for a in _instr(final, "ENTRYPOINT")] == [["sluice"]]
    assert [_exec_form(a) for a in _instr(final, "CMD")] == [["worker"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "sluice" in scripts

    users = _instr(final, "USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}

    env = _dockerfile_env(final)
    assert env.get("SLUICE_DATA_DIR") == "/var/lib/sluice"
    volumes = [v for a in _instr(final, "VOLUME") for v in _exec_form(a)]
    assert env["SLUICE_DATA_DIR"] in volumes
    exposed = {int(p.split("/")[0]) for a in _instr(final, "EXPOSE") for p in a.split()}
    assert exposed == {_default("web_port")}

    (health,) = _instr(final, "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health


def test_dockerfile_copies_every_package_and_nothing_ignored() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {pattern.rstrip("*").rstrip(".") for pattern in include}
    sources = [s for stage in _dockerfile() for s in _copy_sources(stage)]
    assert top_level <= set(sources), f"packages not copied into the image: {top_level}"
    assert "pyproject.toml" in sources
    patterns = _dockerignore()
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_healthcheck_command_reports_the_web_server_state() -> None:
    (health,) = _instr(_dockerfile()[-1], "HEALTHCHECK")
    cmd = _exec_form(health.split(" CMD ", 1)[1])
    assert cmd[0] == "python"
    argv = [sys.executable, *cmd[1:]]

    class Handler(BaseHTTPRequestHandler):
        status = 200

        def do_GET(self) -> None:
            self.send_response(self.status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = str(server.server_address[1])
    try:
        env = {"SLUICE_WEB_PORT": port, "PATH": "/usr/bin:/bin"}
        assert subprocess.run(argv, env=env, timeout=20, check=False).returncode == 0
        Handler.status = 503
        bad = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        assert bad.returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    refused = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
    assert refused.returncode != 0


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order; the last match decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    rules = _dockerignore()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/rocksdb/CURRENT",
        ".cache/sluice/data/x",
        "service/__pycache__/settings.cpython-311.pyc",
        "sluice.egg-info/PKG-INFO",
        "tests/unit/test_deploy_artifacts.py",
    ):
        assert _ignored(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("service/settings.py", "pyproject.toml", "deploy/requirements.lock"):
        assert not _ignored(path, rules), f"{path} is needed by the build"


# ---------------------------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------------------------


def test_compose_runs_two_workers_in_one_group_with_separate_state() -> None:
    workers = _worker_services()
    assert len(workers) >= 2
    data_dir = _dockerfile_env(_dockerfile()[-1])["SLUICE_DATA_DIR"]
    app_ids: set[str] = set()
    volumes: list[str] = []
    host_ports: list[str] = []
    for name, svc in workers.items():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT and (context / build.get("dockerfile", "Dockerfile")).is_file()
        env = _env(svc)
        app_ids.add(env.get("SLUICE_APP_ID", _default("app_id")))
        mounts = [v.split(":") for v in svc["volumes"]]
        vols = [m[0] for m in mounts if m[1] == env.get("SLUICE_DATA_DIR", data_dir)]
        assert len(vols) == 1, f"{name}: mount one volume at {data_dir}"
        assert vols[0] in _compose()["volumes"], f"{name}: {vols[0]} is not a named volume"
        volumes.append(vols[0])
        host_ports.extend(p.split(":")[0] for p in svc.get("ports", []))
        grace = float(str(svc["stop_grace_period"]).rstrip("s"))
        timeout = float(env.get("SLUICE_SHUTDOWN_TIMEOUT", _default("shutdown_timeout")))
        assert grace > timeout, f"{name}: stop_grace_period must exceed {timeout}s"
        assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert len(app_ids) == 1, "workers must share SLUICE_APP_ID to form one group"
    instance_ids = [_env(svc).get("SLUICE_INSTANCE_ID") for svc in workers.values()]
    assert len(set(instance_ids)) == len(instance_ids), "static member ids must differ"
    assert len(set(volumes)) == len(volumes), "each worker needs its own RocksDB volume"
    assert len(set(host_ports)) == len(host_ports)


def test_compose_kafka_and_topic_init() -> None:
    services = _services()
    kafka = services["kafka"]
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"]
    advertised = {a.split("://")[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for svc in _sluice_services().values():
        assert set(_env(svc)["SLUICE_BROKERS"].split(",")) <= advertised
    init = " ".join(_command(services["kafka-init"]))
    created = set(re.findall(r"for topic in ([^;]*);", init)[0].split())
    assert created == JOB_TOPICS, "kafka-init must create exactly the jobs' topics"
    assert "--partitions" in init and "--if-not-exists" in init
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in kafka


def test_compose_traffic_generator() -> None:
    traffic = [s for s in _sluice_services().values() if _command(s)[:2] == ["dev", "traffic"]]
    assert len(traffic) == 1
    assert "--rate" in _command(traffic[0])
    assert traffic[0]["healthcheck"] == {"disable": True}, "it serves no /healthz"


def _mount_target(service: dict[str, Any], source: Path) -> str:
    for volume in service.get("volumes", []):
        src, dst = volume.split(":")[:2]
        if (COMPOSE.parent / src).resolve() == source.resolve():
            return str(dst)
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_scrapes_every_worker_and_loads_the_alerts() -> None:
    prom = _services()["prometheus"]
    config_dir = _mount_target(prom, PROM_DIR)
    assert f"--config.file={config_dir}/prometheus.yml" in _command(prom)
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert [PROM_DIR / f for f in config["rule_files"]] == [ALERTS]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "sluice"]
    assert job.get("honor_labels") is True, "keep sluice's own `job` label"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{name}:{_env(svc).get('SLUICE_WEB_PORT', _default('web_port'))}"
        for name, svc in _worker_services().items()
    }
    assert targets == expected


def test_promtool_accepts_config_and_rules() -> None:
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROM_DIR / "prometheus.yml")]):
        done = subprocess.run([_promtool(), *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_matches_compose_and_dashboard() -> None:
    services = _services()
    grafana = services["grafana"]
    prov_target = _mount_target(grafana, GRAFANA_PROVISIONING)
    assert prov_target == "/etc/grafana/provisioning"
    dash_target = PurePosixPath(_mount_target(grafana, DASHBOARD))

    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    host, port = ds["url"].removeprefix("http://").split(":")
    assert host in services and port == "9090"

    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "sluice.yaml").read_text())
    paths = {PurePosixPath(p["options"]["path"]) for p in providers["providers"]}
    assert dash_target.parent in paths

    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == ds["uid"]
    for panel in _panels(_dashboard()):
        if panel["type"] == "row":
            continue
        for node in [panel, *panel.get("targets", [])]:
            assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


# ---------------------------------------------------------------------------------------------
# metrics referenced by the dashboard and the alerts
# ---------------------------------------------------------------------------------------------


def test_dashboard_and_alerts_reference_only_exported_metrics() -> None:
    exposed = _exposed_metrics()
    known = set(exposed) | {"up"}
    dashboard_names = {n for e in _dashboard_exprs() for n in promql_metric_names(e)}
    alert_names = {n for r in _alert_rules() for n in promql_metric_names(r["expr"])}
    assert not dashboard_names - known, f"dashboard: unknown {sorted(dashboard_names - known)}"
    assert not alert_names - known, f"alerts: unknown {sorted(alert_names - known)}"
    assert {
        "sluice_events_processed_total",
        "sluice_consumer_lag",
        "sluice_event_latency_seconds_bucket",
        "sluice_commits_total",
        "sluice_rebalances_total",
        "sluice_dead_letters_total",
        "sluice_duplicates_skipped_total",
        "process_resident_memory_bytes",
        "sluice_table_keys",
    } <= dashboard_names
    assert {
        "up",
        "sluice_consumer_lag",
        "sluice_dead_letters_total",
        "sluice_commits_total",
        "sluice_assigned_partitions",
    } <= alert_names


def test_grouping_and_legend_labels_exist_on_the_metrics() -> None:
    exposed = _exposed_metrics()
    exprs = [(r["expr"], "") for r in _alert_rules()]
    exprs += [
        (t["expr"], t.get("legendFormat", "")) for p in _panels(_dashboard()) for t in p.get("targets", [])
    ]
    for expr, legend in exprs:
        available = set(TARGET_LABELS)
        for name in promql_metric_names(expr):
            available |= exposed.get(name, frozenset())
        used = promql_grouping_labels(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert used <= available, f"{expr!r}: no such label {sorted(used - available)}"


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": re.sub(r"\$\w+", ".*", e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = _dashboard()
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert dashboard["uid"] and dashboard["title"]


# ---------------------------------------------------------------------------------------------
# alert rules: promtool unit tests on synthetic series
# ---------------------------------------------------------------------------------------------

W1, W2, W3, W4 = (f"worker-{i}:6066" for i in range(1, 5))


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels.setdefault("job", "sluice")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert_cases() -> list[dict[str, Any]]:
    lag = "sluice_consumer_lag"
    return [
        {  # lag: growing and large fires; large but flat, or growing but small, does not
            "interval": "1m",
            "input_series": [
                _series(lag, "1000+100x40", instance=W1, topic="lines", partition="0"),
                _series(lag, "5000x40", instance=W1, topic="lines", partition="1"),
                _series(lag, "0+10x40", instance=W2, topic="events", partition="0"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "SluiceConsumerLagGrowing", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "SluiceConsumerLagGrowing",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "sluice",
                                "instance": W1,
                                "topic": "lines",
                                "partition": "0",
                            }
                        }
                    ],
                },
            ],
        },
        {  # commits: only the worker with partitions, a backlog and no commit fires
            "interval": "1m",
            "input_series": [
                _series("sluice_commits_total", "0x30", instance=W1),
                _series("sluice_assigned_partitions", "2x30", instance=W1),
                _series(lag, "50x30", instance=W1, topic="lines", partition="0"),
                _series("sluice_commits_total", "0+10x30", instance=W2),
                _series("sluice_assigned_partitions", "2x30", instance=W2),
                _series(lag, "50x30", instance=W2, topic="lines", partition="1"),
                _series("sluice_commits_total", "7x30", instance=W3),
                _series("sluice_assigned_partitions", "2x30", instance=W3),
                _series(lag, "0x30", instance=W3, topic="lines", partition="2"),
                _series("sluice_commits_total", "7x30", instance=W4),
                _series("sluice_assigned_partitions", "0x30", instance=W4),
                _series(lag, "50x30", instance=W4, topic="lines", partition="3"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "SluiceNoCommits", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "SluiceNoCommits",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "sluice", "instance": W1}}],
                },
            ],
        },
        {  # dead letters: a steady stream fires, an old count that stopped growing does not
            "interval": "1m",
            "input_series": [
                _series("sluice_dead_letters_total", "0+5x30", instance=W1, job="rollup", reason="bad_json"),
                _series(
                    "sluice_dead_letters_total", "3x30", instance=W1, job="wordcount", reason="oversized"
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "15m",
                    "alertname": "SluiceDeadLettersRising",
                    "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "job": "rollup", "reason": "bad_json"}}
                    ],
                }
            ],
        },
        {  # a worker that stopped answering; and no partitions owned by anyone
            "interval": "1m",
            "input_series": [
                _series("up", "0x10", instance=W1),
                _series("up", "1x10", instance=W2),
                _series("sluice_assigned_partitions", "0x10", instance=W2),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "SluiceWorkerDown",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "sluice", "instance": W1}}],
                },
                {
                    "eval_time": "10m",
                    "alertname": "SluiceNoPartitionsAssigned",
                    "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                },
            ],
        },
        {  # partitions owned by one worker: no alert
            "interval": "1m",
            "input_series": [
                _series("sluice_assigned_partitions", "0x10", instance=W1),
                _series("sluice_assigned_partitions", "4x10", instance=W2),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "SluiceNoPartitionsAssigned", "exp_alerts": []}
            ],
        },
        {  # latency: wordcount's events all land between 5 s and 10 s, rollup's under 0.1 s
            "interval": "1m",
            "input_series": [
                _series("sluice_event_latency_seconds_bucket", "0x30", job="wordcount", le="5.0"),
                _series("sluice_event_latency_seconds_bucket", "0+100x30", job="wordcount", le="10.0"),
                _series("sluice_event_latency_seconds_bucket", "0+100x30", job="wordcount", le="+Inf"),
                _series("sluice_event_latency_seconds_bucket", "0+100x30", job="rollup", le="0.1"),
                _series("sluice_event_latency_seconds_bucket", "0+100x30", job="rollup", le="+Inf"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "SluiceEventLatencyHigh",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "wordcount"}}],
                }
            ],
        },
    ]


def test_alert_rules_fire_on_the_conditions_they_describe(tmp_path: Path) -> None:
    groups = yaml.safe_load(ALERTS.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # promtool compares annotations; labels are the point
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(groups))
    cases = _alert_cases()
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in _alert_rules()}, "every alert needs a case here"
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": cases})
    )
    done = subprocess.run(
        [_promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = sorted(d["kind"] for d in _k8s_docs())
    assert kinds == sorted(["ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget"])
    for doc in _k8s_docs():
        assert doc["apiVersion"] and doc["metadata"]["name"]


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_statefulset_state_probes_and_shutdown() -> None:
    sts = _one("StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    container = _container()
    config = _configmap_env()

    assert spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    service = _one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()

    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # RocksDB on a PVC per pod, mounted where SLUICE_DATA_DIR points.
    data_dir = config.get("SLUICE_DATA_DIR", _dockerfile_env(_dockerfile()[-1])["SLUICE_DATA_DIR"])
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(data_dir) in claims

    # One web port: the container's, the probes', the Service's and the scrape annotation's.
    web_port = _default("web_port")
    assert int(config.get("SLUICE_WEB_PORT", web_port)) == web_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [web_port]

    def port_of(ref: int | str) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], port_of(live["port"])) == ("/healthz", web_port)
    assert (ready["path"], port_of(ready["port"])) == ("/readyz", web_port)
    (svc_port,) = service["spec"]["ports"]
    assert port_of(svc_port["targetPort"]) == web_port

    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == web_port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"

    timeout = float(config.get("SLUICE_SHUTDOWN_TIMEOUT", _default("shutdown_timeout")))
    assert pod["terminationGracePeriodSeconds"] > timeout

    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert _quantity(resources["requests"][key]) <= _quantity(resources["limits"][key])

    # The image's USER, so runAsNonRoot holds and fsGroup makes the PVC writable.
    uid = int(_instr(_dockerfile()[-1], "USER")[-1].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid == pod["securityContext"]["fsGroup"]
    assert container["args"] == ["worker"]


def test_config_and_secret_are_split_and_wired() -> None:
    container = _container()
    config, secret = _one("ConfigMap"), _one("Secret")
    assert not [k for k in _configmap_env() if "PASSWORD" in k], "secrets do not go in the ConfigMap"
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [config["metadata"]["name"]]
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    ref = secret_refs["SLUICE_SASL_PASSWORD"]
    field_refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    # Static membership id = the StatefulSet's stable pod name, never a shared constant.
    assert field_refs.get("SLUICE_INSTANCE_ID") == "metadata.name"
    assert "SLUICE_INSTANCE_ID" not in _configmap_env()
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in _secret_env()
