"""stages.md (and its .json): tables per family and strategy, the fastest UNet step,
and how to re-measure on a GPU."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from benchmarks.harness import Record


def strategy_label(xla: str, batched: bool, precision: str) -> str:
    return f"xla {xla}, cfg {'batched' if batched else 'separate'}, {precision}"


def unet_rows(fam: Record) -> list[tuple[str, bool, str, Record]]:
    """(xla, batched, precision, stats) for every measured UNet configuration."""
    rows = []
    for precision, entry in fam["precisions"].items():
        for xla, res in entry.get("xla", {}).items():
            for batched, key in ((False, "separate_cfg"), (True, "batched_cfg")):
                if "unet_step" in res:
                    rows.append((xla, batched, precision, res["unet_step"][key]))
    return rows


def fastest(rows: list[tuple[str, bool, str, Record]]) -> tuple[str, bool, str, Record] | None:
    return min(rows, key=lambda r: r[3]["median_ms"]) if rows else None


def fmt(stats: Record | None, spread: bool = True) -> str:
    if not stats:
        return "-"
    text = f"{stats['median_ms']:.1f}"
    if spread:
        text += f" ({stats['p10_ms']:.1f}-{stats['p90_ms']:.1f})"
    return text


def verdict(
    candidate: tuple[str, bool, str, Record], best: tuple[str, bool, str, Record], what: str
) -> str:
    """Whether `candidate` is the fastest, within the fastest's spread, or clearly slower."""
    if candidate is best:
        return f"agrees (it is the {what})"
    ratio = candidate[3]["median_ms"] / best[3]["median_ms"]
    if candidate[3]["median_ms"] <= best[3]["p90_ms"]:
        return (
            f"is within noise of the {what} ({ratio:.2f}x its median, inside its p10-p90), "
            "so this run does not tell them apart"
        )
    return f"does not agree: it is {ratio:.2f}x the {what}'s median"


def load_warning(report: Record) -> list[str]:
    """A warning line when other processes kept the CPUs busier than their count."""
    m = report["machine"]
    cpus = m.get("usable_cpus") or m.get("logical_cpus") or 1
    loads = [m["load_average_at_start"][0], *report.get("load_average_at_end", [0])[:1]]
    if m["device"] != "cpu" or max(loads) <= cpus:
        return []
    return [
        f"- **Noisy run**: the 1-minute load average ({max(loads)}) exceeded the {cpus} "
        "usable CPUs, so other processes competed for them; trust large differences only, "
        "and re-run on an idle machine for numbers to act on."
    ]


def render_markdown(report: Record) -> str:
    m = report["machine"]
    auto = report["auto_strategy"]
    lines = [
        "# Per-stage compute by execution strategy",
        "",
        f"Measured by `python -m benchmarks.stages` on {m['date_utc']}. Random weights "
        "(timing does",
        "not depend on the weights' values). Times are milliseconds of wall clock per call,",
        "after warm-up: median (p10-p90). The UNet step is one DDIM step with classifier-free",
        "guidance for one image (`sample_step` on one `Row`): with CFG *separate* that is two",
        "batch-1 UNet calls, with CFG *batched* one batch-2 call. The text encoder call is",
        "one request (prompt + negative prompt = 2 rows, `encode_sync`); the decoder call is",
        "one latent (`decode_sync`). Text encoder and decoder do not depend on the CFG mode:",
        "they are measured once per (XLA, precision) and shown on both rows.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical CPUs, "
        f"{m['usable_cpus']} usable; flags of note: "
        f"{', '.join(m['cpu_flags_of_note']) or 'none'})",
        f"- Memory: {m['memory_gib']} GiB; device kind: {m['device']}"
        + (f"; GPUs: {', '.join(m['gpus'])}" if m["gpus"] else ""),
        f"- Load average at start: {m['load_average_at_start']}, at end: "
        f"{report.get('load_average_at_end', '-')} (other processes may have been running)",
        *load_warning(report),
        f"- Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"keras-cv {m['keras_cv']}, NumPy {m['numpy']}; {m['os']}",
        f"- Total run time: {report.get('total_seconds', '-')} s",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    auto_by_family = auto.get(m["device"], {})
    for name, fam in report["families"].items():
        auto_cpu = auto_by_family.get(name, {})
        width, height = fam["size"]
        lines += [
            f"## {name} at {width}x{height}",
            "",
            f"{fam['repeats']} timed repeats after {fam['warmup']} warm-up call(s) per "
            "configuration.",
            "",
        ]
        if fam.get("xla_skipped"):
            lines += [f"XLA not measured for {name} ({fam['xla_skipped']}).", ""]
        lines += [
            "| XLA | CFG | precision | text encoder ms | UNet step (CFG, 1 image) ms "
            "| decoder ms |",
            "|---|---|---|---:|---:|---:|",
        ]
        notes: list[str] = []
        for precision, entry in fam["precisions"].items():
            if entry["status"] != "ok":
                lines.append(f"| - | - | {precision} | {entry['status']} | | |")
                continue
            for xla, res in entry["xla"].items():
                if "error" in res:
                    lines.append(f"| {xla} | - | {precision} | error: {res['error'][:120]} | | |")
                    continue
                if res.get("note"):
                    notes.append(f"{precision} xla {xla}: {res['note']}")
                for batched, key in ((False, "separate_cfg"), (True, "batched_cfg")):
                    lines.append(
                        f"| {xla} | {'batched' if batched else 'separate'} | {precision} "
                        f"| {fmt(res['text_encoder'])} | **{fmt(res['unet_step'][key])}** "
                        f"| {fmt(res['decoder'])} |"
                    )
        lines.append("")
        lines += [f"- {n}" for n in notes]

        # First calls: trace, plus XLA compilation when on.
        lines += [
            "",
            "First call (trace, and XLA compilation when XLA is on), ms; build = building "
            "the three models and setting their weights, s:",
            "",
            "| precision | build s | XLA | text encoder | UNet step, separate CFG "
            "| UNet step, batched CFG | decoder |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for precision, entry in fam["precisions"].items():
            for xla, res in entry.get("xla", {}).items():
                first = res.get("first_call_ms")
                if not first:
                    continue
                lines.append(
                    f"| {precision} | {entry.get('build_s', '-')} | {xla} "
                    f"| {first['text_encoder']:.0f} | {first['unet_step_separate_cfg']:.0f} "
                    f"| {first['unet_step_batched_cfg']:.0f} | {first['decoder']:.0f} |"
                )
        lines.append("")

        rows = unet_rows(fam)
        best = fastest(rows)
        best32 = fastest([r for r in rows if r[2] == "float32"])
        if best:
            lines.append(
                f"**Fastest UNet step for {name}: {strategy_label(*best[:3])}** "
                f"({best[3]['median_ms']:.1f} ms median)."
            )
        best_min = min(rows, key=lambda r: r[3]["min_ms"]) if rows else None
        if best_min and best and best_min[:3] != best[:3]:
            lines.append(
                f"By the best single run (min, least affected by other load) it is "
                f"{strategy_label(*best_min[:3])} ({best_min[3]['min_ms']:.1f} ms)."
            )
        if best32 and best32 is not best:
            lines.append(
                f"Fastest in float32 (numerically the reference): "
                f"{strategy_label(*best32[:3])} ({best32[3]['median_ms']:.1f} ms)."
            )
        if auto_cpu:
            auto_xla = "on" if auto_cpu["xla"] else "off"
            match = [
                r
                for r in rows
                if r[0] == auto_xla
                and r[1] == bool(auto_cpu["batched_cfg"])
                and r[2] == auto_cpu["precision"]
            ]
            label = strategy_label(auto_xla, bool(auto_cpu["batched_cfg"]), auto_cpu["precision"])
            if match and best:
                lines.append(
                    f'`AUTO_STRATEGY["{m["device"]}"]` ({label}): '
                    f"{match[0][3]['median_ms']:.1f} ms; {verdict(match[0], best, 'fastest')}."
                )
                if best32 and best32 is not best and match[0][2] == "float32":
                    lines.append(
                        f"Among float32 strategies it "
                        f"{verdict(match[0], best32, 'fastest float32 strategy')}."
                    )
        lines.append("")

    lines += [
        "## How to re-measure on a GPU",
        "",
        "On a machine with an NVIDIA GPU, install the CUDA build of TensorFlow and run the",
        "same command (here with `--out` pointing elsewhere, so this report stays);",
        "mixed_float16 is always measured on a GPU (on a CPU it is skipped if emulated):",
        "",
        "```",
        "pip install -e '.[gpu]'   # tensorflow[and-cuda]",
        "python -c 'import tensorflow as tf; print(tf.config.list_physical_devices(\"GPU\"))'",
        gpu_command(report["command"]),
        "```",
        "",
        "Larger sizes are closer to serving (edit `FAMILY_SIZES` in "
        "`benchmarks/stages/common.py`, e.g. sd-v1",
        'at 512x512). Then set `AUTO_STRATEGY["gpu"]` in `shared/execution.py` to the',
        "fastest UNet-step strategy the report names (xla, batched_cfg, precision), keeping",
        "float32 if the reduced precision's images are not acceptable.",
        "",
    ]
    return "\n".join(lines)


def gpu_command(command: str) -> str:
    """The command that produced this report, writing to stages-gpu.md instead."""
    words = shlex.split(command)
    if "--out" in words:
        i = words.index("--out")
        del words[i : i + 2]
    words += ["--out", "benchmarks/results/stages-gpu.md"]
    return shlex.join(words)


def write_outputs(report: Record, args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.write_text(render_markdown(report))
