"""Results of a bench run: medians per variant, ratios against the baselines, goals, the table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import Dataset
from bench.plan import Sizes, Variant

STATELESS_REASON = (
    "this engine has no stateless job: needs SLUICE_JOBS=tokenize (stage 1 only: parse each line, "
    "forward it to an output topic, commit; no repartition, no table)"
)
METRICS_OFF_REASON = (
    "this engine has no SLUICE_METRICS_ENABLED setting: needs it to skip the per-batch "
    "inc/observe calls and the per-record latency observation"
)


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
