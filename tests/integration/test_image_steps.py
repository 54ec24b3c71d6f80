"""The Dockerfile's install steps, run as plain processes (this machine has no Docker engine).

The builder stage's COPY sources go into a scratch build context, the pinned lock is installed into
a fresh virtual environment, the project's wheel is built from that context and installed with
``--no-deps``, and ``pip check`` must pass: the same commands the image runs, so a file missing from
the COPY list, a dependency missing from ``deploy/requirements.lock`` or a module left out of the
wheel fails here. Then ``<venv>/bin/sluice worker`` runs with the image's environment against the
test broker and must serve ``/healthz`` and ``/metrics`` and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
INSTALL_BUDGET_S = 180.0


def _stages() -> list[list[tuple[str, str]]]:
    """Dockerfile stages as (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not logical and not line):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        instr, _, args = (logical + line).partition(" ")
        logical = ""
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return stages


def _copy_sources(stage: list[tuple[str, str]]) -> list[str]:
    sources: list[str] = []
    for instr, args in stage:
        words = shlex.split(args)
        if instr == "COPY" and not any(w.startswith("--from") for w in words):
            sources.extend(w for w in words[:-1] if not w.startswith("--"))
    return sources


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in _stages()[-1]:
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _run(argv: list[str | Path], cwd: Path) -> None:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**os.environ, **PIP_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding exactly what the image's /opt/sluice holds."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for source in _copy_sources(_stages()[0]):
        src, dst = ROOT / source, context / source
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    venv = base / "venv"
    pip = venv / "bin" / "pip"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", venv], base)
    _run([pip, "install", "--require-virtualenv", "-r", context / "deploy" / "requirements.lock"], base)
    _run([pip, "wheel", "--no-deps", "--wheel-dir", base / "wheels", "."], context)
    (wheel,) = (base / "wheels").glob("sluice-*.whl")
    _run([pip, "install", "--require-virtualenv", "--no-deps", wheel], base)
    _run([pip, "check"], base)
    took = time.monotonic() - started
    print(f"image install steps took {took:.0f} s")
    assert took < INSTALL_BUDGET_S, f"install steps took {took:.0f} s (pip cache cold?)"
    return venv


def test_wheel_installs_the_packages_not_the_source_tree(image_venv: Path, tmp_path: Path) -> None:
    code = (
        "import json, agents, service, tables, service.cli, service.worker; "
        "print(json.dumps([m.__file__ for m in (agents, service, tables, service.worker)]))"
    )
    done = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **PIP_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for path in json.loads(done.stdout):
        assert Path(path).is_relative_to(image_venv), f"{path} is not from the installed wheel"
    assert (image_venv / "bin" / "sluice").is_file()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_worker_from_the_image_venv_serves_and_stops_on_sigterm(
    image_venv: Path, kafka: Any, tmp_path: Path
) -> None:
    from kafka_fixtures import free_port  # tests/kafka_fixtures.py, put on sys.path by conftest

    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SLUICE_")}
    env.update(_image_env())
    env.update(
        PATH=f"{image_venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        HOME=str(tmp_path),
        SLUICE_DATA_DIR=str(data_dir),
        SLUICE_BROKERS=kafka.bootstrap_servers,
        SLUICE_WEB_PORT=str(port),
        SLUICE_APP_ID=f"image-steps-{uuid.uuid4().hex[:8]}",
    )
    timeout = float(env.get("SLUICE_SHUTDOWN_TIMEOUT", "25"))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(image_venv / "bin" / "sluice"), "worker"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _, _ = _get(f"{base}/healthz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"/healthz never answered 200:\n{log_path.read_text()[-4000:]}"

        status, headers, body = _get(f"{base}/metrics")
        assert status == 200
        # Prometheus 3 refuses a scrape without a valid exposition Content-Type.
        content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
        assert content_type.startswith(("text/plain", "application/openmetrics-text"))
        assert b"sluice_events_processed" in body

        status, _, body = _get(f"{base}/readyz")
        assert status in (200, 503)
        if status == 503:
            assert json.loads(body), "503 from /readyz must say why, as JSON"

        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=timeout + 5)
        assert returncode == 0, f"exit {returncode} after SIGTERM:\n{log_path.read_text()[-4000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
