"""A real Prometheus for tests: scrapes sluice workers every second and evaluates the alerts.

    with Prometheus(tmp_path) as prom:
        prom.set_targets([worker.port])          # file-based discovery: change it at any time
        prom.wait_value("sum(sluice_events_processed_total)", lambda v: v > 0)

The scrape job is named ``sluice`` (what ``deploy/prometheus/alerts.yml`` and the dashboard
assume) with ``honor_labels: true``: sluice's own metrics carry a ``job`` label (wordcount,
rollup) that must not be renamed to ``exported_job``. Debian's ``prometheus`` binary is used;
tests skip when it is missing. The process is always stopped (context manager, ``atexit``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.kafka_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
JOB = "sluice"


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """One ``prometheus`` process with its config, targets file and TSDB under ``workdir``."""

    def __init__(self, workdir: Path, rules: Path | None = ALERTS, interval: str = "1s") -> None:
        if PROMETHEUS is None:
            raise PrometheusError("the prometheus binary is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rules = rules
        self.interval = interval
        self.targets_file = self.dir / "targets.json"
        self.config = self.dir / "prometheus.yml"
        self.log_path = self.dir / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> Prometheus:
        if not self.targets_file.exists():
            self.set_targets([])
        self._write_config()
        for attempt in range(3):  # another process may take the free port before we bind it
            self.port = free_port()
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
                cwd=self.dir,
            )
            log.close()
            atexit.register(self.stop)
            if self._wait_ready(timeout):
                return self
            self.stop()
            if "address already in use" not in self.tail().lower() or attempt == 2:
                break
        raise PrometheusError(f"prometheus did not become ready:\n{self.tail()}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        return False

    def _write_config(self) -> None:
        # JSON is YAML: no YAML writer needed.
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(self.rules)] if self.rules is not None else [],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        self.config.write_text(json.dumps(config, indent=1))

    def set_targets(self, ports: Iterable[int]) -> None:
        """Scrape ``127.0.0.1:<port>/metrics`` for each port (picked up within a second or two)."""
        groups = [{"targets": [f"127.0.0.1:{p}" for p in ports], "labels": {}}]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_file)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP API

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            doc = json.loads(exc.read() or b"{}")
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (a scalar result becomes one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query as ``{sorted label pairs: value}``."""
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in self.query(expr)}

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or None when it has no result."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def wait_value(
        self, expr: str, accept: Callable[[float], bool], timeout: float = 60, what: str = ""
    ) -> float:
        """Poll ``expr`` (one series) until ``accept(value)``; fail with the last value seen."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and accept(last):
                return last
            time.sleep(0.5)
        raise PrometheusError(f"{what or expr}: last value {last} after {timeout}s")

    def wait_targets_up(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` targets of the sluice job are scraped successfully."""
        self.wait_value(f'count(up{{job="{JOB}"}} == 1)', lambda v: v >= count, timeout, "targets up")

    def rule_states(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------------- the artefacts' queries


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, nested rows included."""
    doc = json.loads(path.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(doc.get("panels", []))
    return out


def dashboard_variables(path: Path = DASHBOARD) -> list[str]:
    doc = json.loads(path.read_text())
    return [v["name"] for v in doc.get("templating", {}).get("list", [])]


GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range", "${__rate_interval}", "${__interval}")


def expand_grafana(expr: str, variables: Iterable[str], interval: str = "1m") -> str:
    """Grafana's built-in intervals to ``interval``, template variables to the regex ``.*``."""
    for name in GRAFANA_INTERVALS:
        expr = expr.replace(name, interval)
    for var in sorted(variables, key=len, reverse=True):
        for form in (f"${{{var}:regex}}", f"${{{var}:pipe}}", f"${{{var}}}", f"[[{var}]]", f"${var}"):
            expr = expr.replace(form, ".*")
    if "$" in expr:
        raise PrometheusError(f"unexpanded variable in {expr!r}")
    return expr


def alert_rules(path: Path = ALERTS) -> list[tuple[str, str]]:
    """(alert name, expr) of every rule in ``alerts.yml`` (``yaml`` comes with the dev extra)."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    return [
        (rule.get("alert") or rule.get("record"), str(rule["expr"]))
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def without_comparisons(expr: str) -> str:
    """``expr`` with each comparison against a number literal removed (``x > 0`` → ``x``).

    An alert condition returns nothing while it does not hold; what must exist is the series
    it compares. Label matchers (``=``, ``=~``, ``!=`` with a quoted string) are left alone.
    """
    import re

    stripped = re.sub(
        r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])",
        "",
        expr,
    )
    return " ".join(stripped.split())
