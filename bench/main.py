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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import Dataset, distinct_key_lines, load, make_dataset, vocabulary_lines
from bench.faust_run import run_faust
from bench.jvm_perf import run_consumer_perf
from bench.latency import run_latency
from bench.procs import ROOT, child_env
from bench.profile import summarise
from bench.sluice_run import BenchError, run_restore, run_wordcount
from service.devbroker.cluster import LocalCluster
from service.devbroker.ports import free_port_block

STATELESS_REASON = (
    "this engine has no stateless job: needs SLUICE_JOBS=tokenize (stage 1 only: parse each line, "
    "forward it to an output topic, commit; no repartition, no table)"
)
METRICS_OFF_REASON = (
    "this engine has no SLUICE_METRICS_ENABLED setting: needs it to skip the per-batch "
    "inc/observe calls and the per-record latency observation"
)


def engine_features() -> dict[str, bool]:
    """Which optional variants the sluice in this tree supports (older trees lack them)."""
    from service.settings import Settings

    try:
        from service.app.builtin import JOBS

        stateless = "tokenize" in JOBS
    except Exception:  # a tree this bench does not know: treat as absent
        stateless = False
    return {"stateless": stateless, "metrics_off": "metrics_enabled" in Settings.model_fields}


@dataclass(frozen=True)
class Sizes:
    """How much data and how many repetitions one mode uses."""

    name: str
    main_lines: int
    faust_lines: int
    ceiling_repeat: int
    distinct_keys: int  # 0: no 1M-key variant
    distinct_repeats: int
    latency_seconds: float
    runs: int


QUICK = Sizes(
    name="quick",
    main_lines=15_000,
    faust_lines=120,
    ceiling_repeat=10,
    distinct_keys=0,
    distinct_repeats=0,
    latency_seconds=6,
    runs=5,
)
FULL = Sizes(
    name="full",
    main_lines=200_000,
    faust_lines=1_000,
    ceiling_repeat=5,
    distinct_keys=1_000_000,
    distinct_repeats=2,
    latency_seconds=20,
    runs=5,
)


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``run`` does one run and returns its numbers (``events``/``seconds``)."""

    key: str
    label: str
    run: Callable[[], dict[str, Any]]
    rate_field: str = "eps"


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


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _goal(value: float | None, target: float, higher_is_better: bool) -> dict[str, Any]:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"value": value, "target": f"{'>=' if higher_is_better else '<='} {target}", "met": met}


class Bench:
    """Results of every run, by variant, in the order they ran (rounds interleaved)."""

    def __init__(self, sizes: Sizes, workdir: Path, log: Callable[[str], None]) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.log = log
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.labels: dict[str, str] = {}

    def record(self, variant: Variant) -> None:
        started = time.monotonic()
        result = variant.run()
        if "eps" not in result and "events" in result and result.get("seconds"):
            result["eps"] = result["events"] / result["seconds"]
        self.results.setdefault(variant.key, []).append(result)
        self.labels[variant.key] = variant.label
        rate = result.get(variant.rate_field)
        shown = f"{rate:,.0f}/s" if isinstance(rate, float | int) else "-"
        rss = f", worker RSS {result['rss_mb']:.0f} MB" if result.get("rss_mb") else ""
        self.log(f"  {variant.label:<34} {shown:>14}  ({time.monotonic() - started:.1f} s wall{rss})")

    def values(self, key: str, field: str) -> list[float]:
        return [float(r[field]) for r in self.results.get(key, []) if r.get(field) is not None]

    def median(self, key: str, field: str = "eps") -> float | None:
        return _median(self.values(key, field))


def run(sizes: Sizes, *, profile: bool, keep: bool, log: Callable[[str], None]) -> dict[str, Any]:
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
            run_wordcount(bootstrap, main, workdir, profile=raw_profile)
            profile_summary = summarise(raw_profile)
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


def summary(
    bench: Bench,
    main: Dataset,
    ceiling: Dataset,
    faust_data: Dataset,
    distinct: Dataset | None,
    latency: dict[str, Any],
    profile: dict[str, Any] | None,
    sizes: Sizes,
    features: dict[str, bool],
) -> dict[str, Any]:
    m = bench.median
    sluice = m("sluice_wordcount")
    raw = m("raw_aiokafka")
    faust = m("faust_stock")
    cpu = [
        r["cpu_seconds"] / r["events"] * 1e6
        for r in bench.results["sluice_wordcount"]
        if r.get("cpu_seconds") is not None
    ]
    faust_cpu = [r["cpu_seconds"] / r["events"] * 1e6 for r in bench.results["faust_stock"]]
    rss = bench.values("sluice_wordcount_1m", "rss_mb")
    restore = m("sluice_restore_1m", "rows_per_s") or m("sluice_restore", "rows_per_s")
    cpu_us = round(statistics.median(cpu), 1) if cpu else None
    paired = [
        on["eps"] / off["eps"]
        for on, off in zip(
            bench.results["sluice_wordcount"],
            bench.results.get("sluice_wordcount_metrics_off", []),
            strict=False,
        )
    ]
    metrics_cost = round(statistics.median(paired), 4) if paired else None
    eos_paired = [
        eos["eps"] / alos["eps"]
        for alos, eos in zip(
            bench.results["sluice_wordcount"], bench.results.get("sluice_wordcount_eos", []), strict=False
        )
    ]

    def cpu_of(key: str) -> float | None:
        values = [
            r["cpu_seconds"] / r["events"] * 1e6 for r in bench.results.get(key, []) if r.get("cpu_seconds")
        ]
        return round(statistics.median(values), 2) if values else None

    raw_cpu = cpu_of("raw_aiokafka")
    iterate_cpu = cpu_of("iterate_sluice")
    p99 = round(latency["p99_ms"], 1)
    out: dict[str, Any] = {
        "mode": sizes.name,
        "sluice_version": None,
        "runs": sizes.runs,
        "events": {
            "sluice": main.events,
            "faust": faust_data.events,
            "baselines": ceiling.events,
            "sluice_1m_keys": distinct.events if distinct else None,
        },
        "raw_aiokafka_eps": round(raw) if raw else None,
        "raw_aiokafka_table_eps": round(m("raw_aiokafka_table") or 0) or None,
        "faust_stock_eps": round(faust, 1) if faust else None,
        "sluice_wordcount_eps": round(sluice) if sluice else None,
        "sluice_stateless_eps": round(m("sluice_stateless") or 0) or None,
        "sluice_wordcount_metrics_off_eps": round(m("sluice_wordcount_metrics_off") or 0) or None,
        "jvm_consumer_eps": round(m("jvm_consumer") or 0) or None,
        "sluice_wordcount_eos_eps": round(m("sluice_wordcount_eos") or 0) or None,
        "eos_cost": round(statistics.median(eos_paired), 4) if eos_paired else None,
        "eos_cost_method": "median over rounds of (exactly_once eps / at_least_once eps), same round",
        "wordcount_vs_aiokafka": _ratio(sluice, raw),
        "wordcount_vs_table_baseline": _ratio(sluice, m("raw_aiokafka_table")),
        "wordcount_vs_faust": _ratio(sluice, faust),
        "metrics_cost": metrics_cost,
        "metrics_cost_method": "median over rounds of (metrics on eps / metrics off eps), runs adjacent",
        "cpu_us_per_event": cpu_us,
        "faust_app_on_sluice_eps": round(m("faust_app_on_sluice") or 0) or None,
        "faust_app_sluice_vs_faust": _ratio(m("faust_app_on_sluice"), faust),
        "iterate_sluice_eps": round(m("iterate_sluice") or 0) or None,
        "iterate_faust_eps": round(m("iterate_faust") or 0) or None,
        "raw_drain_cpu_us_per_event": raw_cpu,
        "iterate_sluice_cpu_us_per_event": iterate_cpu,
        "iterate_faust_cpu_us_per_event": cpu_of("iterate_faust"),
        "framework_cpu_us_per_event": round(iterate_cpu - raw_cpu, 2) if iterate_cpu and raw_cpu else None,
        "framework_cpu_method": "median CPU-us/event of an agent that only iterates (service.App) minus "
        "the raw aiokafka drain's (B2), each in its own process",
        "faust_cpu_us_per_event": round(statistics.median(faust_cpu), 1) if faust_cpu else None,
        "restore_rows_per_s": round(restore) if restore else None,
        "restore_rows": round(m("sluice_restore_1m", "records") or m("sluice_restore", "records") or 0),
        "restore_wall_rows_per_s": round(
            m("sluice_restore_1m", "wall_rows_per_s") or m("sluice_restore", "wall_rows_per_s") or 0
        ),
        "rss_mb_1m_keys": round(statistics.median(rss), 1) if rss else None,
        "sluice_wordcount_1m_keys_eps": round(m("sluice_wordcount_1m") or 0) or None,
        "raw_aiokafka_table_1m_keys_eps": round(m("raw_aiokafka_table_1m") or 0) or None,
        "p99_latency_ms_at_half_load": p99,
        "p50_latency_ms_at_half_load": round(latency["p50_ms"], 1),
        "latency_rate_eps": round(latency["rate"]),
        "latency_method": "end to end: produce time -> every word of the line updated on the output topic "
        "(bench-side clock); histogram_p99_ms is the worker's sluice_event_latency_seconds p99",
        "histogram_p99_ms": round(latency["histogram_p99_ms"], 1) if latency["histogram_p99_ms"] else None,
    }
    if not features["stateless"]:
        out["sluice_stateless_reason"] = STATELESS_REASON
    if not features["metrics_off"]:
        out["sluice_wordcount_metrics_off_reason"] = METRICS_OFF_REASON
        out["metrics_cost_reason"] = "needs sluice_wordcount_metrics_off_eps"
    out["stateless_vs_aiokafka"] = _ratio(out["sluice_stateless_eps"], raw)
    if distinct is None:
        out["rss_mb_1m_keys_reason"] = "the 1M-key variant runs only in the full run (make bench)"
    if profile is not None:
        out["profile_top_self"] = profile["self"]
        out["profile_top_self_lines"] = profile["self_lines"]
        out["profile_sluice_inclusive"] = profile["sluice_inclusive"]
    out["goals"] = {
        "wordcount_vs_aiokafka": _goal(out["wordcount_vs_aiokafka"], 0.5, True),
        "wordcount_vs_faust": _goal(out["wordcount_vs_faust"], 5, True),
        "metrics_cost": _goal(metrics_cost, 0.95, True),
        "cpu_us_per_event": _goal(cpu_us, 20, False),
        "p99_latency_ms_at_half_load": _goal(p99, 100, False),
        "restore_rows_per_s": _goal(out["restore_rows_per_s"], 200_000, True),
        "rss_mb_1m_keys": _goal(out["rss_mb_1m_keys"], 300, False),
        "wordcount_vs_table_baseline": _goal(out["wordcount_vs_table_baseline"], 0.115, True),
        "wordcount_vs_faust_50": _goal(out["wordcount_vs_faust"], 50, True),
        "faust_app_sluice_vs_faust": _goal(out["faust_app_sluice_vs_faust"], 20, True),
        "framework_cpu_us_per_event": _goal(out["framework_cpu_us_per_event"], 10, False),
    }
    out["_table"] = table(bench)
    return out


def table(bench: Bench) -> str:
    """Medians and min-max per variant, as fixed-width text."""
    rows = [f"{'variant':<36} {'runs':>4} {'median':>10} {'min - max':>23} {'unit':<7} {'cpu us/event':>12}"]
    for key, results in bench.results.items():
        restore = "restore" in key
        values = bench.values(key, "rows_per_s" if restore else "eps")
        if not values:
            continue
        cpu = [r["cpu_seconds"] / r["events"] * 1e6 for r in results if r.get("cpu_seconds") is not None]
        spread = f"{min(values):,.0f} - {max(values):,.0f}"
        rows.append(
            f"{bench.labels[key]:<36} {len(values):>4} {statistics.median(values):>10,.0f} {spread:>23} "
            f"{'rows/s' if restore else 'ev/s':<7} {(f'{statistics.median(cpu):.1f}' if cpu else '-'):>12}"
        )
    return "\n".join(rows)


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
