"""python -m benchmarks.precision: how far reduced precision moves the served image.

For each family, the same requests (prompts, seeds, the family's default steps and
guidance) run through the in-process chain once per precision, each precision in its own
child process (Keras's mixed-precision policy is process-wide), XLA off. Each image is
compared with its float32 twin: PSNR in dB (over the whole image, 0-255), and for tiny,
whose embedded weights are trained, the model card's judge too (colour + shape on held-out
prompts). sd-v1 and sd-v2 run on seeded random weights here (none can be downloaded):
their figures measure the arithmetic's drift through the real architecture, not image
quality. Writes precision.md and precision.json into --out-dir.

    python -m benchmarks.precision                       # tiny, sd-v1, sd-v2 (~15 min on 2 CPUs)
    python -m benchmarks.precision --families tiny --prompts 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import REPO_ROOT, Record, load_average, log, utc_now

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
FAMILIES = ("tiny", "sd-v1", "sd-v2")
# tiny at its served size; the SD families at their smallest (CPU time).
SIZES = {"tiny": 64, "sd-v1": 128, "sd-v2": 128}
SD_PROMPTS = ("a photograph of an astronaut riding a horse", "a bowl of fruit, oil painting")
WEIGHTS = {"tiny": "embedded", "sd-v1": "random", "sd-v2": "random"}


def _prompts(family: str, count: int) -> list[str]:
    if family == "tiny":
        from training.scenes import held_out_scenes

        return [scene.caption() for scene in held_out_scenes(count, 0)]
    return list(SD_PROMPTS)


def worker(family: str, precision: str, prompts: int, out: Path) -> None:
    """In this (child) process: every prompt's image at `precision`, saved to `out`."""
    from shared.config import Settings
    from shared.pipeline.chain import Chain
    from shared.pipeline.types import DenoiseParams, GenerationParams

    size = SIZES[family]
    texts = _prompts(family, prompts)
    settings = Settings.model_validate(
        {
            "model": family,
            "weights": WEIGHTS[family],
            "sizes": [(size, size)],
            "precision": precision,
            "xla": "off",
            # Every prompt in one running batch, and no bigger batch buckets to warm up.
            "max_batch": len(texts),
            "queue_size": max(len(texts), 64),
        }
    )
    chain = Chain(settings)
    chain.load()

    async def generate() -> list[np.ndarray]:
        async def one(i: int, prompt: str) -> np.ndarray:
            params = GenerationParams(
                prompt=prompt,
                negative_prompt=None,
                denoise=DenoiseParams(
                    width=size,
                    height=size,
                    steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    seed=i,
                ),
            )
            return np.asarray((await chain.generate(params)).images[0])

        images = await asyncio.gather(*(one(i, p) for i, p in enumerate(texts)))
        await chain.aclose()
        return list(images)

    started = time.perf_counter()
    images = asyncio.run(generate())
    np.savez(out, images=np.stack(images), seconds=time.perf_counter() - started)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The card's PSNR (training.evaluate.psnr), identical images as 99 dB: JSON has no
    infinity."""
    from training.evaluate import psnr as image_psnr

    return min(float(image_psnr(a, b)), 99.0)


def measure_family(family: str, args: argparse.Namespace, tmp: Path) -> Record:
    images: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for precision in args.precisions:
        out = tmp / f"{family}-{precision}.npz"
        log(f"{family} {precision}: child process")
        command = [sys.executable, "-m", "benchmarks.precision", "--worker", family, precision]
        command += ["--prompts", str(args.prompts), "--worker-out", str(out)]
        subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=3600)
        with np.load(out) as data:
            images[precision] = data["images"]
            seconds[precision] = round(float(data["seconds"]), 1)
    reference = images["float32"]
    record: Record = {
        "size": SIZES[family],
        "weights": WEIGHTS[family],
        "prompts": len(reference),
        "seconds": seconds,
        "precisions": {},
    }
    for precision, produced in images.items():
        if precision == "float32":
            continue
        values = [psnr(a, b) for a, b in zip(produced, reference, strict=True)]
        entry: Record = {
            "psnr_db_median": round(float(np.median(values)), 2),
            "psnr_db_min": round(float(np.min(values)), 2),
        }
        if family == "tiny":
            entry.update(_judged(produced, reference, args.prompts))
        record["precisions"][precision] = entry
        log(f"{family} {precision}: {entry}")
    return record


def _judged(produced: np.ndarray, reference: np.ndarray, count: int) -> Record:
    from training.judge import judge
    from training.scenes import held_out_scenes

    scenes = held_out_scenes(count, 0)

    def rate(images: np.ndarray) -> float:
        verdicts = [judge(image, scene) for image, scene in zip(images, scenes, strict=True)]
        return round(100 * float(np.mean([v.colour_and_shape for v in verdicts])), 2)

    return {"colour_and_shape": rate(produced), "colour_and_shape_float32": rate(reference)}


def render(report: Record) -> str:
    lines = [
        "# Reduced precision: how far it moves the served image",
        "",
        "Same requests per precision (the family's default steps and guidance, seeds 0..n-1), "
        "each precision in its own process, XLA off; PSNR of each image against its float32 "
        "twin (0-255, whole image). On a CPU `mixed_float16` is emulated: its numbers are "
        "those of float16 arithmetic, its speed is not a GPU's.",
        "",
        "| family | weights | size | prompts | precision | PSNR median dB | PSNR min dB | "
        "colour + shape (float32) |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for family, record in report["families"].items():
        for precision, entry in record["precisions"].items():
            judged = (
                f"{entry['colour_and_shape']} % ({entry['colour_and_shape_float32']} %)"
                if "colour_and_shape" in entry
                else "—"
            )
            lines.append(
                f"| {family} | {record['weights']} | {record['size']} | {record['prompts']} | "
                f"{precision} | {entry['psnr_db_median']} | {entry['psnr_db_min']} | "
                f"{judged} |"
            )
    lines += ["", "Measured by:", ""]
    for family, record in report["families"].items():
        lines.append(
            f"- {family}: `{record['command']}`, finished {record['finished_utc']}, load "
            f"average at start {record['load_average']}"
        )
    lines += [
        "",
        "How `auto` uses it (`AUTO_STRATEGY` in `shared/execution.py`): reduced precision only "
        "where the image stays close. tiny's figures are on its trained weights; sd-v1's and "
        "sd-v2's on random weights only measure the architecture's arithmetic drift, so their "
        "GPU choice also rests on what is known of the real weights: random weights have no "
        "overflow in float16, SD 2.1's real UNet does (its attention scores: black images in "
        "diffusers, A1111 and InvokeAI without float32 attention), so sd-v2's UNet stays "
        "float32 on GPUs (see the README's execution strategy section). Rerun on a GPU with "
        "real weights: `python -m benchmarks.precision --weights-dir sd-v2=DIR`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--prompts", type=int, default=32, help="tiny's held-out prompts")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument(
        "--weights-dir",
        action="append",
        default=[],
        metavar="FAMILY=DIR",
        help="real weights for a family (a converted or keras-cv directory)",
    )
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--worker", nargs=2, metavar=("FAMILY", "PRECISION"), help=argparse.SUPPRESS
    )
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for item in args.weights_dir:
        family, _, directory = item.partition("=")
        if family not in FAMILIES or not directory:
            parser.error(f"--weights-dir {item!r}: expected FAMILY=DIR, FAMILY one of {FAMILIES}")
        WEIGHTS[family] = directory
    if args.worker:
        worker(args.worker[0], args.worker[1], args.prompts, args.worker_out)
        return 0
    out = Path(args.out_dir)
    if not out.is_absolute():
        out = REPO_ROOT / out
    if args.render_only:
        (out / "precision.md").write_text(render(json.loads((out / "precision.json").read_text())))
        return 0
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    for family in families:
        if family not in FAMILIES:
            parser.error(f"unknown family {family!r}")
    args.precisions = PRECISIONS
    command = " ".join(
        ["python -m benchmarks.precision", *(sys.argv[1:] if argv is None else argv)]
    )
    previous = out / "precision.json"
    # Families measured by an earlier run stay (each says which command measured it).
    kept = json.loads(previous.read_text())["families"] if previous.is_file() else {}
    report: Record = {"families": {f: r for f, r in kept.items() if f not in families}}
    with tempfile.TemporaryDirectory(prefix="sdserve-precision-") as tmp:
        for family in families:
            load_before = load_average()
            record = measure_family(family, args, Path(tmp))
            record.update(command=command, finished_utc=utc_now(), load_average=load_before)
            report["families"][family] = record
            (out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / "precision.md").write_text(render(report))
    log(f"wrote {out / 'precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
