"""``sluice dev``: a real local Kafka for development, and the jars it runs from.

``sluice dev broker`` is a foreground process on purpose: scripts and tests start it, read the
one ``ready <bootstrap-servers>`` line from stdout, and stop it with SIGTERM; everything else it
says goes to stderr so that stdout stays machine-readable. That includes the answers to the
commands it reads from stdin to stop, kill and restart single nodes (see
:mod:`service.devbroker.control`) and, with ``--tls``/``--sasl-scram``, the ``SLUICE_*=value``
lines a client needs, one per line (``grep ^SLUICE_`` makes an env file of them); the SASL
password is only ever named by its file.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from service.cli.common import SluiceGroup
from service.devbroker.version import DEFAULT_KAFKA_VERSION, VERSION_ENV

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_VERSION_HELP = f"Kafka release to run, 3.9.x or 4.x [default: ${VERSION_ENV} or {DEFAULT_KAFKA_VERSION}]."


class _StopRequested(BaseException):
    """Raised from the SIGINT/SIGTERM handler to unwind start-up or the wait loop."""


@click.group(cls=SluiceGroup)
def dev() -> None:
    """Local development: a real Kafka broker (KRaft) from Maven Central jars."""


@dev.command()
@click.option("--kafka-version", metavar="V", help=_VERSION_HELP)
def jars(kafka_version: str | None) -> None:
    """Fetch the Kafka jars (once, with mvn); print their lib dir."""
    from service.devbroker.jars import ensure_jars

    lib = ensure_jars(kafka_version, progress=lambda line: click.echo(line, err=True))
    click.echo(str(lib))


@dev.command()
@click.option(
    "--port",
    type=click.IntRange(1024, 65533),
    default=9092,
    show_default=True,
    help="Client port of broker 1; brokers 2 and 3 use PORT+1 and PORT+2.",
)
@click.option(
    "--brokers", type=click.Choice(["1", "3"]), default="1", show_default=True, help="Number of nodes."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep data here across runs [default: a temporary dir, removed on exit].",
)
@click.option("--kafka-version", metavar="V", help=_VERSION_HELP)
@click.option("--heap", default="512m", show_default=True, help="JVM -Xmx of each node.")
@click.option(
    "--tls", is_flag=True, help="Client ports speak TLS (SSL) with a generated CA (DATA_DIR/tls/ca.pem)."
)
@click.option(
    "--sasl-scram",
    is_flag=True,
    help="Client ports require SASL SCRAM-SHA-512/256, user 'sluice' (password: DATA_DIR/tls/sasl-password).",
)
def broker(
    port: int,
    brokers: str,
    data_dir: Path | None,
    kafka_version: str | None,
    heap: str,
    tls: bool,
    sasl_scram: bool,
) -> None:
    """Run a local Kafka cluster in the foreground until SIGINT/SIGTERM.

    Prints exactly one line to stdout, "ready <bootstrap-servers>", once every broker accepts
    connections; logs go to DATA_DIR/node-<id>.log. With --tls and/or --sasl-scram the client
    ports speak SSL, SASL_PLAINTEXT or SASL_SSL (brokers use a PLAINTEXT port of their own), and
    the SLUICE_* settings a client needs are printed to stderr as NAME=value lines.

    \b
    To rehearse a broker failure, type commands on stdin, one per line:
      status    one line per node: id, port, running or stopped, pid
      stop N    SIGTERM node N (controlled shutdown)
      kill N    SIGKILL node N (a crash)
      start N   restart node N on its data dir, answer once it is registered again

    Answers go to stderr. A node that dies on its own is reported there while the other nodes
    keep serving. End of stdin ends the commands, not the cluster.

    On SIGINT/SIGTERM it stops every broker and exits 0; it exits 1 if a broker dies and no
    node is left running (as a 1-node cluster's), 2 if a port is in use.
    """
    from service.devbroker.cluster import LocalCluster
    from service.devbroker.control import COMMANDS, serve

    cluster = LocalCluster(
        base_port=port,
        brokers=int(brokers),
        data_dir=data_dir,
        kafka_version=kafka_version,
        heap=heap,
        tls=tls,
        sasl_scram=sasl_scram,
    )
    previous = {signum: signal.signal(signum, _raise_stop) for signum in _STOP_SIGNALS}
    try:
        cluster.start()
        click.echo(f"ready {cluster.bootstrap_servers}")
        sys.stdout.flush()
        click.echo(
            f"sluice dev broker: Kafka {cluster.version}, {brokers} node(s), {cluster.security_protocol} "
            f"clients, logs in {cluster.data_dir}/node-<id>.log; commands on stdin: {COMMANDS}; "
            "Ctrl-C stops",
            err=True,
        )
        if tls or sasl_scram:
            click.echo("sluice dev broker: client settings:", err=True)
            for name, value in cluster.client_env.items():
                click.echo(f"{name}={value}", err=True)
        sys.stderr.flush()
        serve(cluster, say=lambda line: click.echo(f"sluice dev broker: {line}", err=True))
    except _StopRequested:
        pass
    finally:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        cluster.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM handler: unwind start-up or the wait loop, wherever the main thread is."""
    raise _StopRequested
