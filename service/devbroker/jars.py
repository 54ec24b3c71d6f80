"""The broker's jars: resolved once per Kafka version from Maven Central, then reused.

Kafka's broker is published to Maven Central as ordinary jars, so a local broker needs Java and
Maven but no tarball. ``ensure_jars`` runs maven-dependency-plugin's ``copy-dependencies`` on
the ``pom.xml`` shipped in this package, in ``$SLUICE_KAFKA_CACHE/<version>/`` (default
``~/.cache/sluice/kafka/<version>/``), and returns its ``lib/``.

Why the care around it:

* A marker file is written only after the copy succeeded and was checked, and the copy goes to
  ``lib.partial/`` first, so an interrupted download is redone rather than half-used.
* An exclusive file lock serialises two processes (two pytest sessions, ``make setup`` and a
  test) that would otherwise download into the same directory at once.
* Kafka publishes no logging backend; exactly one SLF4J binding must be in ``lib/`` or the
  broker logs nothing (no binding) or a random one wins (several). 4.x gets the log4j2 binding
  at the very log4j version Kafka itself pulls, which is looked up with ``dependency:list``
  first, so log4j-api, log4j-core and the binding always match.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from service.devbroker.version import KafkaVersion, resolve_version
from service.errors import ConfigError, OperationError

CACHE_ENV = "SLUICE_KAFKA_CACHE"
MARKER = "jars.ok"

_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Artifacts that bind SLF4J 1.x/2.x to a backend; lib/ must hold exactly one.
_SLF4J_BINDINGS = re.compile(
    r"^(slf4j-reload4j|slf4j-log4j12|log4j-slf4j-impl|log4j-slf4j2-impl|logback-classic"
    r"|slf4j-simple|slf4j-nop|slf4j-jdk14)-\d.*\.jar$"
)
_LOG4J_CORE = re.compile(r"org\.apache\.logging\.log4j:log4j-core:jar:([^:\s]+):")
_SLF4J_API = re.compile(r"org\.slf4j:slf4j-api:jar:([^:\s]+):")


def cache_root() -> Path:
    """``$SLUICE_KAFKA_CACHE``, else ``~/.cache/sluice/kafka`` (honouring ``XDG_CACHE_HOME``)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "kafka"


def version_dir(version: KafkaVersion) -> Path:
    """The cache directory of one Kafka version (its pom, lib/ and marker)."""
    return cache_root() / str(version)


def cached_lib_dir(version: str | KafkaVersion | None = None) -> Path | None:
    """``lib/`` of ``version`` if a complete download is already cached, else None."""
    parsed = version if isinstance(version, KafkaVersion) else resolve_version(version)
    directory = version_dir(parsed)
    if (directory / MARKER).is_file() and (directory / "lib").is_dir():
        return directory / "lib"
    return None


def ensure_jars(
    version: str | KafkaVersion | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the ``lib/`` directory of Kafka ``version``, downloading it first if needed.

    ``version`` defaults to ``$SLUICE_KAFKA_VERSION``, else 3.9.1. ``progress`` receives one
    line before a download starts (the CLI prints it to stderr); nothing is said on a cache hit.
    Raises ConfigError when Maven is missing, OperationError when resolution fails.
    """
    parsed = version if isinstance(version, KafkaVersion) else resolve_version(version)
    cached = cached_lib_dir(parsed)
    if cached is not None:
        return cached
    directory = version_dir(parsed)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory / ".lock"):
        cached = cached_lib_dir(parsed)  # another process may have finished meanwhile
        if cached is not None:
            return cached
        if progress is not None:
            progress(f"resolving Kafka {parsed} jars with Maven into {directory} (once)")
        _download(parsed, directory)
    return directory / "lib"


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the kernel drops it if this process dies."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(version: KafkaVersion, directory: Path) -> None:
    """Resolve into ``lib.partial/``, check it, move it to ``lib/``, then write the marker."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError("mvn not found on PATH: install Maven (Debian: apt-get install maven)")
    (directory / MARKER).unlink(missing_ok=True)
    pom = resources.files("service.devbroker").joinpath("pom.xml").read_text(encoding="utf-8")
    (directory / "pom.xml").write_text(pom, encoding="utf-8")
    partial, lib = directory / "lib.partial", directory / "lib"
    for stale in (partial, lib):
        shutil.rmtree(stale, ignore_errors=True)

    profile = ["-P", "reload4j"]
    if version.uses_log4j2:
        profile = ["-P", "log4j2", f"-Dlog4j.version={_pulled_log4j_version(mvn, version, directory)}"]
    _run_maven(
        mvn,
        version,
        directory,
        [
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
            *profile,
        ],
    )
    _check_lib(version, partial)
    partial.rename(lib)
    (directory / MARKER).write_text(f"{version}\n", encoding="utf-8")


def _pulled_log4j_version(mvn: str, version: KafkaVersion, directory: Path) -> str:
    """The log4j-core version Kafka 4.x depends on, read from ``dependency:list``."""
    listing = directory / "dependencies.txt"
    _run_maven(
        mvn,
        version,
        directory,
        [
            f"{_DEPENDENCY_PLUGIN}:list",
            f"-DoutputFile={listing}",
            "-DincludeScope=runtime",
            "-P",
            "probe",
        ],
    )
    text = listing.read_text(encoding="utf-8")
    slf4j = _SLF4J_API.search(text)
    if slf4j is not None and not slf4j.group(1).startswith("1."):
        # log4j-slf4j-impl binds SLF4J 1.x only; a 2.x API would need log4j-slf4j2-impl.
        raise OperationError(
            f"Kafka {version} uses slf4j-api {slf4j.group(1)}; service/devbroker/pom.xml "
            "only binds SLF4J 1.x for 4.x (add a log4j-slf4j2-impl profile)"
        )
    core = _LOG4J_CORE.search(text)
    if core is None:
        raise OperationError(f"Kafka {version} pulls no log4j-core; cannot pick a log4j2 binding")
    return core.group(1)


def _run_maven(mvn: str, version: KafkaVersion, directory: Path, goal_args: list[str]) -> None:
    """Run one quiet batch-mode Maven goal in ``directory``; fail with Maven's own output."""
    command = [mvn, "-B", "-q", *goal_args, f"-Dkafka.version={version}"]
    result = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        output = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        errors = [line for line in output if "ERROR" in line and len(line) > len("[ERROR] ")]
        tail = (errors[0] if errors else " | ".join(output[-5:]))[-1500:]
        raise OperationError(
            f"Maven could not resolve Kafka {version} (exit {result.returncode}): {tail or 'no error output'}"
        )


def _check_lib(version: KafkaVersion, lib: Path) -> None:
    """Refuse a ``lib/`` without the broker jar or without exactly one SLF4J binding."""
    names = sorted(path.name for path in lib.glob("*.jar"))
    if f"kafka_2.13-{version}.jar" not in names:
        raise OperationError(f"Maven output in {lib} lacks kafka_2.13-{version}.jar")
    bindings = [name for name in names if _SLF4J_BINDINGS.match(name)]
    if len(bindings) != 1:
        raise OperationError(f"expected exactly one SLF4J binding in {lib}, found {bindings or 'none'}")
