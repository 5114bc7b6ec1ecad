"""samplers.md and samplers.png from samplers.json: the accuracy tables, and for each
sampler the fewest measured steps within 2 points of DDIM at 25 steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import Record, fmt, notes_block, section_block
from shared.sampler_names import SAMPLER_NAMES, SAMPLERS, SamplerName

REFERENCE_SAMPLER: SamplerName = "ddim"
REFERENCE_STEPS = 25
TOLERANCE_POINTS = 2.0
CHART = "samplers.png"
CARD_SECTION = "card"
# What "the card's scores hold" means for a new default, measure by measure: (path into a
# setting's scores, label, unit, the most it may fall below the card's own settings; None:
# shown, not judged). Accuracies may fall 2 points, as the samplers' verdicts allow;
# inpainting one case of 24; image to image 1 dB. The last preview is taken one step
# before the end, so fewer steps change what it shows: reported only.
CARD_MEASURES: tuple[tuple[str, str, str, float | None], ...] = (
    ("text_to_image.colour_and_shape", "held-out prompts, colour + shape", "%", 2.0),
    ("text_to_image.place", "held-out prompts, place", "%", 2.0),
    ("held_out_phrasings.colour", "held-out phrasings, colour", "%", 2.0),
    ("held_out_phrasings.shape", "held-out phrasings, shape", "%", 2.0),
    ("held_out_phrasings.colour_and_shape", "held-out phrasings, colour + shape", "%", 2.0),
    ("inpainting_colour_and_shape_inside", "inpainting, colour + shape inside", "%", 100 / 24),
    ("img2img_psnr_db_min", "image to image at 0.2, PSNR min", "dB", 1.0),
    ("img2img_psnr_db_median", "image to image at 0.2, PSNR median", "dB", 1.0),
    ("last_preview_psnr_db_median", "last preview vs image, PSNR median", "dB", None),
)


def _measured(report: Record) -> dict[SamplerName, Record]:
    """The sections that measured something, in the samplers' order."""
    sections = report.get("sections", {})
    return {
        name: sections[name]
        for name in SAMPLER_NAMES
        if name in sections and not sections[name].get("_error")
    }


def _card_value(scores: Record, path: str) -> float | None:
    value: Any = scores
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def card_verdicts(section: Record) -> dict[str, list[str]]:
    """For each setting beside the card's own: the measures that fell further than
    CARD_MEASURES allows (empty: the card's scores hold there)."""
    settings = section.get("settings", {})
    reference = settings.get(section.get("reference"), {})
    failing: dict[str, list[str]] = {}
    for label, scores in settings.items():
        if label == section.get("reference"):
            continue
        failing[label] = []
        for path, name, _unit, allowed in CARD_MEASURES:
            ours, card = _card_value(scores, path), _card_value(reference, path)
            if allowed is not None and (ours is None or card is None or ours < card - allowed):
                failing[label].append(name)
    return failing


def derive(report: Record) -> None:
    """Add the reference (DDIM at 25 steps) and each sampler's verdict to the report."""
    card = report.get("sections", {}).get(CARD_SECTION)
    if card and not card.get("_error"):
        report["card_verdicts"] = card_verdicts(card)
    measured = _measured(report)
    reference_run = measured.get(REFERENCE_SAMPLER, {}).get("by_steps", {})
    reference = reference_run.get(str(REFERENCE_STEPS), {}).get("colour_and_shape")
    report["reference"] = {
        "sampler": REFERENCE_SAMPLER,
        "steps": REFERENCE_STEPS,
        "colour_and_shape": reference,
        "tolerance_points": TOLERANCE_POINTS,
    }
    verdicts: Record = {}
    for name, section in measured.items():
        steps = sorted(int(s) for s in section["by_steps"])
        within = [
            s
            for s in steps
            if reference is not None
            and section["by_steps"][str(s)]["colour_and_shape"] >= reference - TOLERANCE_POINTS
        ]
        verdicts[name] = {"fewest_steps_within": min(within) if within else None}
    report["verdicts"] = verdicts
    prompts = {entry["prompts"] for s in measured.values() for entry in s["by_steps"].values()}
    report["prompts_measured"] = sorted(prompts)
    held_out = report.get("weights", {}).get("held_out_prompts")
    report["preliminary"] = bool(
        report.get("note") or not prompts or held_out is None or max(prompts) < held_out
    )


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def _status(report: Record) -> list[str]:
    if not report.get("preliminary"):
        return []
    prompts = report.get("prompts_measured") or ["?"]
    held_out = report.get("weights", {}).get("held_out_prompts", "?")
    one_prompt = 100 / prompts[0] if isinstance(prompts[0], int) and prompts[0] else None
    lines = [
        f"> **Preliminary.** Measured on {', '.join(map(str, prompts))} of tiny's {held_out} "
        "held-out prompts"
        + (
            f" (one prompt is {one_prompt:.1f} points, so a 2-point margin is not resolved)"
            if one_prompt
            else ""
        )
        + ". "
        + (report.get("note") or "")
    ]
    return [*lines, ""]


def _accuracy_table(report: Record, measured: dict[SamplerName, Record]) -> list[str]:
    steps = sorted({int(s) for section in measured.values() for s in section["by_steps"]})
    lines = [
        "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for name, section in measured.items():
        cells = [_pct(section["by_steps"].get(str(s), {}).get("colour_and_shape")) for s in steps]
        lines.append(f"| {SAMPLERS[name].label} (`{name}`) | " + " | ".join(cells) + " |")
    return lines


def _verdict_table(report: Record, measured: dict[SamplerName, Record]) -> list[str]:
    reference = report["reference"]["colour_and_shape"]
    floor = None if reference is None else reference - TOLERANCE_POINTS
    lines = [
        f"Reference: DDIM at {REFERENCE_STEPS} steps, **{_pct(reference)} %**; within "
        f"{TOLERANCE_POINTS:g} points means at least {_pct(floor)} %.",
        "",
        "| sampler | fewest steps within 2 points | accuracy there | UNet evaluations "
        f"vs DDIM at {REFERENCE_STEPS} |",
        "|---|---:|---:|---:|",
    ]
    for name, verdict in report["verdicts"].items():
        fewest = verdict["fewest_steps_within"]
        if fewest is None:
            lines.append(f"| {SAMPLERS[name].label} | none of the measured | — | — |")
            continue
        accuracy = measured[name]["by_steps"][str(fewest)]["colour_and_shape"]
        lines.append(
            f"| {SAMPLERS[name].label} | **{fewest}** | {_pct(accuracy)} | "
            f"{fewest / REFERENCE_STEPS:.2f}x |"
        )
    return lines


def _detail(section: Record) -> list[str]:
    lines = [
        "| steps | colour + shape | colour | shape | place | size | prompts | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, entry in sorted(section["by_steps"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {steps} | {_pct(entry['colour_and_shape'])} | {_pct(entry['colour'])} | "
            f"{_pct(entry['shape'])} | {_pct(entry['place'])} | {_pct(entry['size'])} | "
            f"{entry['prompts']} | {fmt(entry['seconds'])} |"
        )
    return lines


def reading(report: Record) -> str | None:
    """The verdicts in a sentence: which sampler gets there in the fewest steps."""
    verdicts = {
        name: v["fewest_steps_within"]
        for name, v in report.get("verdicts", {}).items()
        if v["fewest_steps_within"] is not None
    }
    if not verdicts or REFERENCE_SAMPLER not in verdicts:
        return None
    fewest = min(verdicts.values())
    best = [SAMPLERS[n].label for n, s in verdicts.items() if s == fewest]
    ddim = verdicts[REFERENCE_SAMPLER]
    others = [n for n in verdicts if n != REFERENCE_SAMPLER]
    if all(verdicts[n] >= ddim for n in others):
        verdict = f"none gets there in fewer steps than DDIM itself ({ddim})"
    else:
        verdict = f"fewest: {' and '.join(best)} at {fewest} steps, DDIM itself at {ddim}"
    return (
        f"Within {TOLERANCE_POINTS:g} points of DDIM at {REFERENCE_STEPS} steps, among the "
        f"measured step counts: {verdict}."
    )


def _card(section: Record) -> list[str]:
    settings = section["settings"]
    reference = section["reference"]
    labels = [reference, *(label for label in settings if label != reference)]
    failing = card_verdicts(section)
    lines = [
        f"The model card's scores at its own settings (`{reference}`) and at each candidate "
        "default: the same prompts, seeds and cases. A candidate keeps the card's scores when "
        "no judged measure falls further than allowed.",
        "",
        "| measure | allowed fall | "
        + " | ".join(f"`{label}`" + (" (card)" if label == reference else "") for label in labels)
        + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for path, name, unit, allowed in CARD_MEASURES:
        cells = []
        for label in labels:
            value = _card_value(settings[label], path)
            mark = " ✗" if name in failing.get(label, []) else ""
            cells.append(("—" if value is None else f"{value:.1f} {unit}") + mark)
        shown = "shown only" if allowed is None else f"{allowed:.1f} {unit}"
        lines.append(f"| {name} | {shown} | " + " | ".join(cells) + " |")
    seconds = " | ".join(fmt(settings[label].get("seconds")) for label in labels)
    lines += [f"| seconds (all of the above) | | {seconds} |", ""]
    for label, fails in failing.items():
        verdict = "**hold**" if not fails else "do not hold: " + ", ".join(fails)
        lines.append(f"- At `{label}` the card's scores {verdict}.")
    return lines


def _notes(report: Record) -> list[str]:
    notes = [
        "Accuracy is the model card's measure (training.judge): the largest blob of the "
        "prompt's colour covers a third of the shape's area and its fill of its bounding "
        "box is nearest the prompt's shape. Same prompts and seeds for every sampler.",
        "DPM++ 2M and Euler ancestral follow k-diffusion (`sample_dpmpp_2m`, "
        "`sample_euler_ancestral`, its default schedule or Karras sigmas with rho 7); "
        "tiny's guidance interval (guided only at timesteps >= "
        f"{report.get('weights', {}).get('guidance_from_timestep')}) applies to each.",
        "Seconds are wall time for all prompts of a row through the in-process chain on "
        "this machine, which may be shared: read them as relative cost, not latency.",
    ]
    summary = reading(report)
    if summary:
        notes.insert(0, summary)
    if len(report.get("prompts_measured", [])) > 1:
        notes.append(
            "**Sections were measured on different prompt counts** (kept from earlier runs): "
            "rerun with --fresh before comparing."
        )
    return notes


def render_markdown(report: Record) -> str:
    measured = _measured(report)
    weights = report.get("weights", {})
    lines = [
        "# Samplers: quality per step on tiny",
        "",
        *_status(report),
        f"`{report['command']}` · {report.get('mode')} run · finished "
        f"{report.get('finished_utc')} · {report.get('total_seconds')} s",
        "",
        f"Weights: {weights.get('label')} (UNet sha256 "
        f"`{str(weights.get('diffusion_model_sha256'))[:16]}…`), guidance "
        f"{weights.get('guidance_scale')}, 64x64; colour + shape accuracy in % on held-out "
        "prompts, one image each.",
        "",
        f"![accuracy by steps]({CHART})",
        "",
        "## Colour + shape accuracy (%)",
        "",
        *_accuracy_table(report, measured),
        "",
        f"## Fewest steps within {TOLERANCE_POINTS:g} points of DDIM at {REFERENCE_STEPS}",
        "",
        *_verdict_table(report, measured),
        "",
    ]
    for name in SAMPLER_NAMES:
        if name in report.get("sections", {}):
            lines += section_block(
                f"{SAMPLERS[name].label} (`{name}`)", report["sections"][name], _detail
            )
    card = report.get("sections", {}).get(CARD_SECTION)
    if card:
        lines += section_block("The model card's scores at a new default", card, _card)
    machine = report.get("machine", {})
    lines += [
        "## Machine",
        "",
        ", ".join(f"{k}: {v}" for k, v in machine.items()),
        "",
        *notes_block("Notes", "notes", lambda: _notes(report)),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_chart(report: Record, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = _measured(report)
    fig, axis = plt.subplots(figsize=(7, 4.2))
    for name, section in measured.items():
        points = sorted((int(s), e["colour_and_shape"]) for s, e in section["by_steps"].items())
        axis.plot(*zip(*points, strict=True), marker="o", label=SAMPLERS[name].label)
    reference = report.get("reference", {}).get("colour_and_shape")
    if reference is not None:
        axis.axhline(reference, color="grey", lw=0.8, ls="--", label=f"DDIM at {REFERENCE_STEPS}")
        axis.axhspan(
            reference - TOLERANCE_POINTS,
            reference,
            color="grey",
            alpha=0.15,
            label=f"within {TOLERANCE_POINTS:g} points",
        )
    steps = sorted({int(s) for section in measured.values() for s in section["by_steps"]})
    axis.set_xticks(steps)
    prompts = report.get("prompts_measured") or ["?"]
    title = f"tiny, {prompts[0]} held-out prompts"
    if report.get("preliminary"):
        title += " (preliminary)"
    axis.set_title(title)
    axis.set_xlabel("steps (UNet evaluations, each with its CFG pass)")
    axis.set_ylabel("colour + shape accuracy (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out_dir / CHART
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
