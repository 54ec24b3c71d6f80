"""``python -m bench [--quick]``: start a broker, pre-load topics, run every variant interleaved.

Order of a run:

1. generate the datasets (:mod:`bench.data`) and their truth;
2. start a one-node :class:`~service.devbroker.cluster.LocalCluster` on free ports (stopped in
   ``finally``, whatever happens) and pre-load the topics;
3. run each variant ``--runs`` times (default 5), interleaved: round 1 runs every variant once,
   then round 2, ...; each sluice run is checked against the truth and followed by a restore
   measurement on its changelog;
4. measure end-to-end latency at half the median sluice rate (:mod:`bench.latency`);
5. optionally profile one more sluice run with py-spy (``--profile``; on by default in the full
   run) and summarise its self time;
6. print a table of medians and min-max, then one line of JSON (the last line of stdout).

Which topic each variant reads, and why:

* sluice reads the *main* topic (``--quick``: 15k lines; full: 200k); Faust reads a prefix of it
  (120 / 1000 lines): stock Faust processes well under 100 lines/s here, and five interleaved
  runs on the main topic would take longer than the rest of the suite together;
* the baselines that run at 100k+ events/s (B2, B3, Kafka's ConsumerPerformance) read the same
  lines repeated ``ceiling_repeat`` times, so that a run lasts seconds instead of a tenth of one
  and start-up noise does not dominate. Every rate is events per second of steady processing,
  so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import Dataset, distinct_key_lines, load, make_dataset, vocabulary_lines
from bench.faust_run import run_faust
from bench.jvm_perf import run_consumer_perf
from bench.latency import run_latency
from bench.plan import FULL, QUICK, Sizes, Variant
from bench.procs import ROOT, child_env
from bench.profile import summarise
from bench.report import Bench, summary
from bench.sluice_run import BenchError, run_restore, run_wordcount
from service.devbroker.cluster import LocalCluster
from service.devbroker.ports import free_port_block


def engine_features() -> dict[str, bool]:
    """Which optional variants the sluice in this tree supports (older trees lack them)."""
    from service.settings import Settings

    try:
        from service.app.builtin import JOBS

        stateless = "tokenize" in JOBS
    except Exception:  # a tree this bench does not know: treat as absent
        stateless = False
    return {"stateless": stateless, "metrics_off": "metrics_enabled" in Settings.model_fields}


def _raw(mode: str, bootstrap: str, dataset: Dataset) -> dict[str, Any]:
    """B2/B3 in a fresh interpreter (see :mod:`bench.raw`)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.raw", mode, "--bootstrap", bootstrap, "--topic", dataset.topic],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"bench.raw {mode} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["events"] != dataset.events:
        raise BenchError(f"bench.raw {mode} read {result['events']} of {dataset.events} events")
    if mode == "table" and (result["keys"], result["tokens"]) != (len(dataset.truth), dataset.tokens):
        raise BenchError(
            f"bench.raw table: {result['keys']} keys / {result['tokens']} tokens, expected "
            f"{len(dataset.truth)} / {dataset.tokens}"
        )
    return result


def _jvm(bootstrap: str, dataset: Dataset) -> dict[str, Any]:
    out = run_consumer_perf(bootstrap, dataset.topic, dataset.events)
    if int(out["data.consumed.in.nMsg"]) != dataset.events:
        raise BenchError(f"ConsumerPerformance read {out['data.consumed.in.nMsg']} of {dataset.events}")
    return {
        "events": dataset.events,
        "seconds": out["fetch.time.ms"] / 1000,
        "cpu_seconds": None,
        "with_join_eps": out["nMsg.sec"],
    }


def _tree_version() -> str:
    """The commit the worker ran, ``+dirty`` when service/, tables/ or agents/ had local edits."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "service", "tables", "agents")
    return head + ("+dirty" if dirty else "")


def run(sizes: Sizes, *, profile: bool, keep: bool, log: Callable[[str], None]) -> dict[str, Any]:
    if profile and not Path(sys.executable).with_name("py-spy").exists():  # before 20 minutes of runs
        raise BenchError("py-spy is not installed (make setup installs it), or run with --no-profile")
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    log(f"workdir {workdir}; generating data ...")
    lines = vocabulary_lines(sizes.main_lines)
    main = make_dataset("vocabulary", "bench-lines", lines)
    faust_data = make_dataset("faust", "bench-lines-faust", lines[: sizes.faust_lines])
    faust_sluice_data = make_dataset(
        "faust-sluice", "bench-lines-faust-sluice", lines[: sizes.main_lines // 3]
    )
    iterate_faust_data = make_dataset("iterate", "bench-lines-iterate", lines[: sizes.main_lines // 3])
    repeat = sizes.ceiling_repeat
    truth = Counter({word: n * repeat for word, n in main.truth.items()})
    ceiling = Dataset("ceiling", "bench-lines-ceiling", lines * repeat, truth)
    distinct = (
        make_dataset(
            "distinct", "bench-lines-1m", distinct_key_lines(sizes.distinct_keys, sizes.distinct_repeats)
        )
        if sizes.distinct_keys
        else None
    )
    features = engine_features()
    version_at_start = _tree_version()
    cluster = LocalCluster(base_port=free_port_block(1), brokers=1, data_dir=workdir / "kafka", heap="1g")
    bench = Bench(sizes, workdir, log)
    restore_app: dict[str, str] = {}
    try:
        started = time.monotonic()
        cluster.start()
        bootstrap = cluster.bootstrap_servers
        log(f"broker {bootstrap} up in {time.monotonic() - started:.1f} s; loading topics ...")
        for dataset in filter(
            None, (main, faust_data, faust_sluice_data, iterate_faust_data, ceiling, distinct)
        ):
            asyncio.run(load(bootstrap, dataset.topic, dataset.lines))
        log(
            f"loaded: main {main.events} lines ({main.tokens} words, {len(main.truth)} distinct), "
            f"ceiling {ceiling.events}, faust {faust_data.events}"
            + (f", 1m-keys {distinct.events} lines ({len(distinct.truth)} distinct)" if distinct else "")
        )
        _raw("drain", bootstrap, ceiling)  # warm-up: broker page cache and JIT, not recorded

        def sluice_main() -> dict[str, Any]:
            result = run_wordcount(bootstrap, main, workdir)
            restore_app["main"] = result["app_id"]
            return result

        def sluice_distinct() -> dict[str, Any]:
            assert distinct is not None
            result = run_wordcount(bootstrap, distinct, workdir, timeout=1800)
            restore_app["distinct"] = result["app_id"]
            return result

        variants = [
            Variant("raw_aiokafka", "B2 aiokafka getmany drain", lambda: _raw("drain", bootstrap, ceiling)),
            Variant(
                "raw_aiokafka_table",
                "B3 aiokafka + rocksdict wordcount",
                lambda: _raw("table", bootstrap, ceiling),
            ),
            Variant("jvm_consumer", "Kafka ConsumerPerformance (JVM)", lambda: _jvm(bootstrap, ceiling)),
            Variant(
                "faust_stock",
                "faust-streaming 0.15 agent+table",
                lambda: run_faust(bootstrap, faust_data, workdir),
            ),
            Variant("sluice_wordcount", "sluice wordcount", sluice_main),
            Variant(
                "faust_app_on_sluice",
                "the Faust wordcount file on service.App",
                lambda: run_faust(bootstrap, faust_sluice_data, workdir, on="sluice"),
            ),
            Variant(
                "iterate_sluice",
                "agent only iterating, service.App",
                lambda: run_faust(bootstrap, main, workdir, module="bench.iterate_app", on="sluice"),
            ),
            Variant(
                "iterate_faust",
                "agent only iterating, stock faust.App",
                lambda: run_faust(bootstrap, iterate_faust_data, workdir, module="bench.iterate_app"),
            ),
            Variant(
                "sluice_restore",
                "sluice restore (rows/s)",
                lambda: run_restore(bootstrap, restore_app["main"], main.topic, workdir),
                rate_field="rows_per_s",
            ),
        ]
        if features["metrics_off"]:
            variants.append(
                Variant(
                    "sluice_wordcount_metrics_off",
                    "sluice wordcount, metrics off",
                    lambda: run_wordcount(bootstrap, main, workdir, metrics=False),
                )
            )
        variants.append(
            Variant(
                "sluice_wordcount_eos",
                "sluice wordcount, exactly_once",
                lambda: run_wordcount(bootstrap, main, workdir, guarantee="exactly_once"),
            )
        )
        if features["stateless"]:
            variants.append(
                Variant(
                    "sluice_stateless",
                    "sluice tokenize (stateless)",
                    lambda: run_wordcount(bootstrap, main, workdir, job="tokenize"),
                )
            )
        if distinct is not None:
            variants += [
                Variant("sluice_wordcount_1m", "sluice wordcount, 1M keys", sluice_distinct),
                Variant(
                    "sluice_restore_1m",
                    "sluice restore 1M keys (rows/s)",
                    lambda: run_restore(bootstrap, restore_app["distinct"], distinct.topic, workdir),
                    rate_field="rows_per_s",
                ),
                Variant(
                    "raw_aiokafka_table_1m",
                    "B3 aiokafka + rocksdict, 1M keys",
                    lambda: _raw("table", bootstrap, distinct),
                ),
            ]
        for round_no in range(1, sizes.runs + 1):
            log(f"round {round_no}/{sizes.runs}")
            for variant in variants:
                bench.record(variant)

        sluice_eps = bench.median("sluice_wordcount")
        assert sluice_eps is not None
        rate = sluice_eps / 2
        log(f"latency: {rate:,.0f} lines/s (half of {sluice_eps:,.0f}) for {sizes.latency_seconds:.0f} s")
        latency = run_latency(bootstrap, lines, rate, sizes.latency_seconds, workdir)
        log(
            f"  p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms end to end; "
            f"histogram p99 {latency['histogram_p99_ms']}"
        )

        profile_summary = None
        if profile:
            log("profiling one more sluice wordcount run with py-spy (not a measurement)")
            raw_profile = workdir / "profile.txt"
            try:
                run_wordcount(bootstrap, main, workdir, profile=raw_profile)
                profile_summary = summarise(raw_profile)
            except BenchError as exc:  # the measurements stand without it
                log(f"  no profile: {exc}")
            if keep:
                log(f"  raw profile: {raw_profile}")
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = summary(bench, main, ceiling, faust_data, distinct, latency, profile_summary, sizes, features)
    version_at_end = _tree_version()
    # Other engineers commit to the same tree: a worker started later runs newer code.
    out["sluice_version"] = (
        version_at_start
        if version_at_end == version_at_start
        else f"{version_at_start} -> {version_at_end} (the engine changed during the run)"
    )
    return out


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, no 1M-key variant (<3 min)")
    parser.add_argument("--runs", type=int, help="runs per variant (default 5)")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile one extra sluice run with py-spy (default: on in the full run)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, profile)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs)
    profile = args.profile if args.profile is not None else not args.quick

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) unwind through the
    # ``finally`` blocks, so the broker and every worker started here are stopped.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    try:
        out = run(sizes, profile=profile, keep=args.keep, log=log)
    except KeyboardInterrupt:
        print("bench: interrupted; stopped what it started", file=sys.stderr, flush=True)
        return 130
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    text = out.pop("_table")
    out["wall_seconds"] = round(time.monotonic() - started, 1)
    print(text)
    print()
    for name, goal in out["goals"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        print(f"goal {name:<30} {goal['target']:>10}  value {goal['value']!s:>10}  {verdict}")
    for key, title in (
        ("profile_top_self", "profile, top self time by function"),
        ("profile_top_self_lines", "profile, top self time by line"),
        ("profile_sluice_inclusive", "profile, sluice functions by inclusive time"),
    ):
        if out.get(key):
            print(f"\n{title} (% of the worker's busy samples):")
            for frame, share in out[key]:
                print(f"  {share:5.1f}%  {frame}")
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0
