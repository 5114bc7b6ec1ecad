"""serving.png: throughput and latency against concurrency, batching on vs off."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.harness import Record


def render_chart(report: Record, path: Path) -> str | None:
    families = report["sections"].get("concurrency", {}).get("families", {})
    if not families:
        return "no concurrency results"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    fig, axes = plt.subplots(len(families), 2, figsize=(11, 4 * len(families)), squeeze=False)
    colours = {"cb": "tab:blue", "nocb": "tab:orange"}
    labels = {"cb": "continuous batching", "nocb": "one request at a time"}
    for row, (family, entry) in enumerate(families.items()):
        cfg = entry["config"]
        ax_t, ax_l = axes[row]
        for mode in ("cb", "nocb"):
            levels = sorted(entry["levels"][mode], key=lambda lv: lv["clients"])
            if not levels:
                continue
            x = [lv["clients"] for lv in levels]
            ax_t.plot(
                x,
                [lv["images_per_s"] for lv in levels],
                "o-",
                color=colours[mode],
                label=labels[mode],
            )
            p50 = [(lv["latency"].get("p50_ms") or np.nan) / 1000 for lv in levels]
            p95 = [(lv["latency"].get("p95_ms") or np.nan) / 1000 for lv in levels]
            ax_l.plot(x, p50, "o-", color=colours[mode], label=f"{labels[mode]} p50")
            ax_l.plot(x, p95, "s--", color=colours[mode], alpha=0.7, label=f"{labels[mode]} p95")
        title = f"{family} {cfg['size']}, {cfg['steps']} steps"
        ax_t.set_title(f"throughput, {title}")
        ax_t.set_ylabel("images / s")
        ax_l.set_title(f"latency, {title}")
        ax_l.set_ylabel("seconds")
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cfg["clients"], [str(c) for c in cfg["clients"]])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"sdserve three-endpoints on {report['machine']['usable_cpus']} CPUs "
        f"({report['machine']['cpu_model']}), {report['finished_utc']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
