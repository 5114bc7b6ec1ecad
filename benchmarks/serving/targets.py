"""Each target of the "Throughput" issue checked against the measured numbers."""

from __future__ import annotations

from benchmarks.harness import Record, ratio
from benchmarks.serving.plans import TARGETS


def level_of(levels: list[Record], clients: int) -> Record | None:
    return next((lv for lv in levels if lv["clients"] == clients), None)


def evaluate_targets(sections: Record) -> list[Record]:
    """Each target of the issue: measured value, threshold, met or not."""
    out: list[Record] = []
    topo = sections.get("topologies", {}).get("families", {}).get("sd-v1", {}).get("summary")
    if topo:
        value = topo.get("three-endpoints", {}).get("ratio_to_all_in_one")
        out.append(
            {
                "target": "sd-v1 128x128: three-endpoints / all-in-one median latency ≤ 1.05",
                "value": value,
                "met": None if value is None else value <= TARGETS["topology_ratio_max"],
            }
        )
        value = topo.get("three-endpoints", {}).get("ratio_at_equal_compute")
        if value is not None:
            out.append(
                {
                    "target": "the same ratio at equal model compute (what the topology "
                    "adds, free of load drift) ≤ 1.05",
                    "value": value,
                    "met": value <= TARGETS["topology_ratio_max"],
                }
            )
    kcv = sections.get("keras_cv", {}).get("ratios")
    if kcv:
        value = kcv.get("ours_vs_keras_cv_default")
        out.append(
            {
                "target": "ours ≤ 0.5x keras-cv default (jit_compile=True), steady state",
                "value": value,
                "met": None if value is None else value <= TARGETS["vs_keras_cv_default_max"],
            }
        )
        value = kcv.get("ours_vs_keras_cv_best")
        out.append(
            {
                "target": "ours never slower than keras-cv's best setting "
                f"({kcv.get('keras_cv_best')})",
                "value": value,
                "met": None if value is None else value <= TARGETS["vs_keras_cv_best_max"],
            }
        )
    tiny = sections.get("concurrency", {}).get("families", {}).get("tiny", {}).get("levels")
    if tiny:
        cb8, nocb8 = level_of(tiny["cb"], 8), level_of(tiny["nocb"], 8)
        if cb8 and nocb8:
            value = ratio(cb8["images_per_s"], nocb8["images_per_s"])
            out.append(
                {
                    "target": "tiny 64x64, 8 clients: CB throughput ≥ 2x no-CB",
                    "value": value,
                    "met": None if value is None else value >= TARGETS["cb_throughput_min"],
                }
            )
        cb1, nocb1 = level_of(tiny["cb"], 1), level_of(tiny["nocb"], 1)
        if cb1 and nocb1:
            value = ratio(cb1["latency"].get("p50_ms"), nocb1["latency"].get("p50_ms"))
            out.append(
                {
                    "target": "tiny 64x64, 1 client: CB p50 latency ≤ 1.1x no-CB",
                    "value": value,
                    "met": None if value is None else value <= TARGETS["cb_lone_latency_max"],
                }
            )
    over = sections.get("overload", {})
    if over.get("overload"):
        ok = bool(over["overload"]["all_200_or_503"] and over["moderate"]["all_200_or_503"])
        counts = over["overload"]["status_counts"]
        out.append(
            {
                "target": "overload: every request answered 200 or 503, none hangs",
                "value": ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                "met": ok,
            }
        )
        growth = {k: v for k, v in over.get("rss_growth", {}).items() if v is not None}
        if growth:
            worst = max(growth.values())
            out.append(
                {
                    "target": "overload: each process's RSS within 10% of moderate load",
                    "value": f"worst {worst:.3f}x ({max(growth, key=lambda k: growth[k])})",
                    "met": worst <= TARGETS["rss_growth_max"],
                }
            )
    return out
