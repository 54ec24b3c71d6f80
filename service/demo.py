"""``make demo``: a local broker, the worker, sample traffic, a live view, and a verdict.

Runs the real path end to end: a Kafka broker from Maven Central jars, ``sluice worker`` as a
subprocess (exactly as an operator runs it), traffic for a bounded time, live events/s and
lag per partition read from the worker's ``/metrics``, then the top 10 words from the
``wordcount`` table (rebuilt from its changelog) and whether it equals the count of what was
produced. Everything it started is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from service.changelog import read_table
from service.devbroker.cluster import LocalCluster
from service.devbroker.ports import free_port, free_port_block, port_is_free
from service.settings import Settings, load_settings
from service.traffic import TrafficGenerator

_SAMPLE = re.compile(r"^(sluice_\w+)\{([^}]*)\} (\S+)$", re.M)


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    out = []
    for name, labels, value in _SAMPLE.findall(text):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out.append((name, pairs, float(value)))
    return out


def live_line(samples: list[tuple[str, dict[str, str], float]], eps: float, settings: Settings) -> str:
    inputs = {settings.wordcount_input_topic, settings.rollup_input_topic}
    lag = {
        f"{labels['topic']}:{labels['partition']}": int(value)
        for name, labels, value in samples
        if name == "sluice_consumer_lag" and labels.get("topic") in inputs
    }
    shown = " ".join(f"{k}={v}" for k, v in sorted(lag.items()))
    return f"  processed {eps:7.0f} events/s | lag {shown or '(measuring)'}"


def processed_total(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return sum(v for name, _, v in samples if name == "sluice_events_processed_total")


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("demo: the worker did not become ready")


async def run_traffic(gen: TrafficGenerator, seconds: float, metrics_url: str, settings: Settings) -> None:
    task = asyncio.create_task(gen.run(seconds))
    last_total, last_t = 0.0, time.monotonic()
    while not task.done():
        await asyncio.sleep(2)
        try:
            samples = await asyncio.to_thread(scrape, metrics_url)
        except OSError:
            continue
        total, now = processed_total(samples), time.monotonic()
        eps = (total - last_total) / (now - last_t)
        last_total, last_t = total, now
        p = gen.produced
        print(f"produced {p.lines} lines + {p.events} events", end="")
        print(live_line(samples, eps, settings), flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS", 30)))
    parser.add_argument("--rate", type=int, default=int(os.environ.get("DEMO_RATE", 300)))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    port = 9092 if port_is_free(9092) and port_is_free(9093) else free_port_block(1)
    web_port = 6066 if port_is_free(6066) else free_port()
    cluster = LocalCluster(base_port=port, brokers=1, data_dir=workdir / "kafka")
    worker: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print(f"starting a local Kafka broker on 127.0.0.1:{port} ...", flush=True)
        t0 = time.monotonic()
        cluster.start()
        print(f"broker ready in {time.monotonic() - t0:.1f}s", flush=True)
        env = {
            **os.environ,
            "SLUICE_BROKERS": cluster.bootstrap_servers,
            "SLUICE_DATA_DIR": str(workdir / "worker"),
            "SLUICE_WEB_PORT": str(web_port),
            "SLUICE_WINDOW_GRACE_MS": "1000",
        }
        settings = load_settings(brokers=cluster.bootstrap_servers)
        log = (workdir / "worker.log").open("wb")
        sluice = str(Path(sys.executable).with_name("sluice"))
        worker = subprocess.Popen([sluice, "worker"], env=env, stdout=log, stderr=log)
        wait_ready(web_port, worker)
        metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        print(f"worker ready; metrics: {metrics_url}  (health: /healthz, /readyz; log: {workdir}/worker.log)")
        print(
            f"producing {args.rate} lines/s and {args.rate} events/s for {args.seconds:.0f}s ...", flush=True
        )
        gen = TrafficGenerator(settings, args.rate)
        asyncio.run(run_traffic(gen, args.seconds, metrics_url, settings))
        return verdict(settings, gen, metrics_url)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", flush=True)
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        cluster.stop()
        print("stopped the worker and the broker", flush=True)


def verdict(settings: Settings, gen: TrafficGenerator, metrics_url: str) -> int:
    expected = gen.produced.words
    deadline = time.monotonic() + 60
    table: dict[str, int] = {}
    while time.monotonic() < deadline:
        table = {e.key: e.value for e in asyncio.run(read_table(settings, "wordcount"))}
        if table == dict(expected):
            break
        time.sleep(1)
    top = Counter(table).most_common(10)
    print("top 10 words (table rebuilt from its changelog):")
    for word, count in top:
        print(f"  {word:<12} {count}")
    samples = scrape(metrics_url)
    dead = sum(v for n, _, v in samples if n == "sluice_dead_letters_total")
    print(f"dead letters: {dead:.0f} (malformed events produced: {gen.produced.bad_events})")
    if table == dict(expected):
        print(f"table equals the truth: yes ({len(table)} words, {sum(table.values())} occurrences)")
        return 0
    missing = {w: (c, table.get(w)) for w, c in expected.items() if table.get(w) != c}
    print(f"table equals the truth: NO ({len(missing)} words differ, e.g. {list(missing.items())[:5]})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
