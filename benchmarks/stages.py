"""Per-stage compute under each execution strategy, on this machine.

For each model family (sd-v1 at 128x128, tiny at 64x64 by default) and each execution
strategy (XLA on/off x classifier-free guidance batched or not x precision), measures
after warm-up, over repeated runs:

- the text encoder call for one request: prompt + negative prompt = 2 rows, exactly
  `LocalTextEncoder.encode_sync` (tokenisation included);
- one denoising step with CFG for one image: `shared.sampler.sample_step` on one `Row`,
  which is where `batched_cfg` matters (one batch-2 UNet call, or two batch-1 calls);
- the decoder call for one latent: `LocalDecoder.decode_sync` (batch 1).

The first call of each (trace, plus XLA compilation when XLA is on) is reported
separately. Each family's models are built once per precision; XLA on/off reuses the
same Keras models, recompiled (`ModelRunner(model, xla=...)` calls `model.compile`, which
resets the model's predict function, so the next call retraces under the new setting).

Writes a markdown report (default benchmarks/results/stages.md) and the raw numbers next
to it as JSON (same name, .json). The execution defaults per device live in
`shared.execution.AUTO_STRATEGY`; this is what they are chosen from.

    python benchmarks/stages.py                       # everything (minutes on a 2-core CPU)
    python benchmarks/stages.py --quick               # fewer repeats, a rough look
    python benchmarks/stages.py --families tiny --repeats 50
    python benchmarks/stages.py --skip-xla-for sd-v1  # if XLA compiles are unbearable
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

# Family -> (width, height) measured.
FAMILY_SIZES: dict[str, tuple[int, int]] = {"sd-v1": (128, 128), "tiny": (64, 64)}
DEFAULT_REPEATS: dict[str, int] = {"sd-v1": 7, "tiny": 30}
QUICK_REPEATS: dict[str, int] = {"sd-v1": 3, "tiny": 10}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE_PROMPT = ""
GUIDANCE_SCALE = 7.5
STEPS = 25  # the schedule the measured step belongs to (its timestep is the first one)

Record = dict[str, Any]


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timing


def summarize(samples_s: list[float]) -> Record:
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 3),
        "p10_ms": round(float(np.percentile(ms, 10)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "samples_ms": [round(float(x), 3) for x in ms],
    }


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()  # every runner returns numpy, so the work is done when this returns
    return time.perf_counter() - started


def measure(fn: Callable[[], Any], *, warmup: int, repeats: int) -> tuple[float, Record]:
    """First call (trace/compile) in seconds, then stats over `repeats` after warm-up."""
    first = timed(fn)
    for _ in range(warmup):
        fn()
    return first, summarize([timed(fn) for _ in range(repeats)])


# --------------------------------------------------------------------------- machine


def machine_description() -> Record:
    import keras
    import keras_cv
    import tensorflow as tf

    from shared.execution import detect_device

    cpu_model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(details.get("device_name", gpu.name))
    interesting = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "hostname_kind": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_flags_of_note": [f for f in interesting if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": detect_device(),
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_cv": keras_cv.__version__,
        "numpy": np.__version__,
        "os": platform.platform(),
    }


# --------------------------------------------------------------------------- one family


def call_sync(stage: Any, method: str, models: Any, *args: Any) -> Any:
    """Call a stage's `*_sync` method with these models, whether it takes them as its
    first argument or reads them from `stage.models`."""
    fn = getattr(stage, method)
    if "models" in inspect.signature(fn).parameters:
        return fn(models, *args)
    stage.models = models
    return fn(*args)


class FamilyBench:
    """Builds one family at one precision and measures it under XLA off and on."""

    def __init__(self, family_name: str, precision: str, args: argparse.Namespace) -> None:
        from shared.config import Settings
        from shared.execution import ExecutionStrategy, detect_device
        from shared.families import get_family
        from shared.pipeline.local.decoder import make_decoder
        from shared.pipeline.local.text_encoder import make_text_encoder

        self.family_name = family_name
        self.precision = precision
        self.args = args
        self.size = FAMILY_SIZES[family_name]
        self.device = detect_device()
        self.settings = Settings(
            model=family_name,
            weights="random",
            sizes=[self.size],
            xla="off",
            batched_cfg="off",
            precision=precision,
        )
        self.family = get_family(family_name)
        self.strategy = ExecutionStrategy(
            xla=False, batched_cfg=False, precision=precision, device=self.device
        )
        self.text_stage = make_text_encoder(self.settings)
        self.decoder_stage = make_decoder(self.settings)
        self.loaded: Any = None

    def close(self) -> None:
        self.text_stage.close()
        self.decoder_stage.close()
        self.text_stage.models = None
        self.decoder_stage.models = None
        self.loaded = None

    def build(self) -> float:
        from shared.models import load_components

        started = time.perf_counter()
        self.loaded = load_components(
            self.settings,
            self.family,
            self.strategy,
            ("text_encoder", "diffusion_model", "decoder"),
        )
        return time.perf_counter() - started

    def compile_for(self, xla: bool) -> tuple[Any, bool]:
        """LoadedModels for this XLA setting over the same Keras models, and whether XLA
        really is on (Keras falls back to jit_compile=False for models that can't)."""
        from dataclasses import replace

        from shared.models import LoadedModels, ModelRunner

        base = self.loaded
        text_model = base.text_encoder.model
        unet_model = base.diffusion[self.size].model
        decoder_model = base.decoder[self.size].model
        runners = [ModelRunner(m, xla=xla) for m in (text_model, unet_model, decoder_model)]
        for runner in runners:
            # compile() must have dropped the previous predict function, or the old
            # setting would silently keep running.
            assert runner.model.predict_function is None, "recompiling kept a stale function"
        effective = all(bool(r.model.jit_compile) == xla for r in runners)
        models = LoadedModels(
            family=self.family,
            strategy=replace(self.strategy, xla=xla),
            sizes=[self.size],
            origins=dict(base.origins),
            text_encoder=runners[0],
            diffusion={self.size: runners[1]},
            decoder={self.size: runners[2]},
        )
        return models, effective

    # -- the three measured calls

    def text_call(self, models: Any) -> Callable[[], Any]:
        return lambda: call_sync(
            self.text_stage, "encode_sync", models, [PROMPT], [NEGATIVE_PROMPT]
        )

    def decoder_call(self, models: Any) -> Callable[[], Any]:
        latent = np.random.default_rng(1).standard_normal(
            (1, *self.family.latent_shape(self.size[1], self.size[0])), dtype=np.float32
        )
        return lambda: call_sync(self.decoder_stage, "decode_sync", models, latent, self.size)

    def unet_step(
        self, models: Any, context: np.ndarray, uncond: np.ndarray
    ) -> Callable[[bool], float]:
        """A function running one CFG denoising step of one image; returns its seconds.

        A fresh Row is made outside the timed region each time, so every measured step is
        the same (first) step of a STEPS-step schedule.
        """
        from shared.sampler import Row, ddim_timesteps, initial_noise, sample_step

        runner = models.diffusion[self.size]
        latent = initial_noise(0, self.family.latent_shape(self.size[1], self.size[0]))
        timesteps = ddim_timesteps(STEPS)

        def predict(latent: np.ndarray, t_emb: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            return runner({"latent": latent, "timestep_embedding": t_emb, "context": ctx})

        def step(batched_cfg: bool) -> float:
            row = Row(
                latent=latent.copy(),
                context=context,
                unconditional_context=uncond,
                guidance_scale=GUIDANCE_SCALE,
                timesteps=timesteps,
            )
            started = time.perf_counter()
            sample_step(predict, [row], batched_cfg=batched_cfg)
            elapsed = time.perf_counter() - started
            if not np.all(np.isfinite(row.latent)):
                raise FloatingPointError("non-finite latent after the step")
            return elapsed

        return step

    def run_xla(self, xla: bool, *, repeats: int, warmup: int) -> Record:
        models, effective = self.compile_for(xla)
        result: Record = {"xla_requested": xla, "xla_effective": effective, "first_call_ms": {}}
        if xla and not effective:
            result["note"] = "Keras refused jit_compile=True for at least one model"

        label = f"{self.family_name} {self.precision} xla={'on' if xla else 'off'}"
        log(f"{label}: text encoder")
        first, stats = measure(self.text_call(models), warmup=warmup, repeats=repeats)
        result["first_call_ms"]["text_encoder"] = round(first * 1000, 1)
        result["text_encoder"] = stats

        encoded = call_sync(self.text_stage, "encode_sync", models, [PROMPT], [NEGATIVE_PROMPT])
        context = encoded.context[:1].astype(np.float32)
        uncond = encoded.unconditional_context[:1].astype(np.float32)

        log(f"{label}: UNet step (first calls trace/compile batch 1 and batch 2)")
        step = self.unet_step(models, context, uncond)
        # As the diffusion stage warms up both shapes before serving, trace both before
        # timing either, then alternate the two modes so load drift hits both alike.
        result["first_call_ms"]["unet_step_separate_cfg"] = round(step(False) * 1000, 1)
        result["first_call_ms"]["unet_step_batched_cfg"] = round(step(True) * 1000, 1)
        for _ in range(warmup):
            step(False)
            step(True)
        samples: dict[bool, list[float]] = {False: [], True: []}
        for i in range(repeats):
            order = (False, True) if i % 2 == 0 else (True, False)
            for batched in order:
                samples[batched].append(step(batched))
        result["unet_step"] = {
            "separate_cfg": summarize(samples[False]),
            "batched_cfg": summarize(samples[True]),
        }

        log(f"{label}: decoder")
        first, stats = measure(self.decoder_call(models), warmup=warmup, repeats=repeats)
        result["first_call_ms"]["decoder"] = round(first * 1000, 1)
        result["decoder"] = stats
        return result

    def probe_unet_seconds(self, calls: int = 3) -> float:
        """Median of a few warm separate-CFG steps without XLA (the CPU float16 check)."""
        models, _ = self.compile_for(False)
        shape = (1, self.family.spec.max_tokens, self.family.spec.context_dim)
        zeros = np.zeros(shape, dtype=np.float32)
        step = self.unet_step(models, zeros, zeros)
        step(False)  # trace
        step(False)  # warm-up
        return float(np.median([step(False) for _ in range(calls)]))


def bench_precision(
    family_name: str,
    precision: str,
    *,
    repeats: int,
    warmup: int,
    xla_settings: list[bool],
    fp16_reference_ms: float | None,
    args: argparse.Namespace,
    save: Callable[[Record], None],
) -> Record:
    """Everything for one family at one precision, in this process."""
    from shared.execution import detect_device

    entry: Record = {"status": "ok", "xla": {}}
    log(f"{family_name} {precision}: building")
    bench = FamilyBench(family_name, precision, args)
    try:
        entry["build_s"] = round(bench.build(), 1)
        log(f"{family_name} {precision}: built in {entry['build_s']} s")
        if precision == "mixed_float16" and detect_device() == "cpu":
            seconds = bench.probe_unet_seconds()
            entry["probe_unet_step_ms"] = round(seconds * 1000, 1)
            reason = fp16_cpu_skip_reason(seconds, fp16_reference_ms, args)
            if reason:
                entry["status"] = f"skipped: {reason}"
                log(f"{family_name} {precision}: {entry['status']}")
                return entry
        for xla in xla_settings:
            key = "on" if xla else "off"
            try:
                entry["xla"][key] = bench.run_xla(xla, repeats=repeats, warmup=warmup)
            except Exception as exc:
                log(f"{family_name} {precision} xla={key} failed: {exc!r}")
                entry["xla"][key] = {
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-2000:],
                }
            save(entry)  # keep what is measured if a later configuration dies
    finally:
        bench.close()
    return entry


def fp16_cpu_skip_reason(
    seconds: float, reference_ms: float | None, args: argparse.Namespace
) -> str:
    """CPUs mostly emulate float16: give up on it if a UNet step is far too slow."""
    if reference_ms is not None and seconds * 1000 > args.fp16_max_slowdown * reference_ms:
        return (
            f"float16 looks emulated on this CPU: a warm CFG step took {seconds * 1000:.0f} ms "
            f"vs {reference_ms:.0f} ms in float32 (> {args.fp16_max_slowdown:g}x)"
        )
    if reference_ms is None and seconds > args.fp16_max_step_s:
        return (
            f"float16 looks emulated on this CPU: a warm CFG step took {seconds:.1f} s "
            f"(> {args.fp16_max_step_s:g} s)"
        )
    return ""


def worker_main(args: argparse.Namespace) -> int:
    """`--worker FAMILY:PRECISION`: measure one family at one precision, write JSON."""
    family_name, precision = args.worker.split(":", 1)
    out = Path(args.worker_out)

    def save(entry: Record) -> None:
        # Linux reports ru_maxrss in KiB.
        entry["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        out.write_text(json.dumps(entry, indent=2) + "\n")

    entry = bench_precision(
        family_name,
        precision,
        repeats=args.repeats,
        warmup=args.warmup,
        xla_settings=[False] if family_name in args.skip_xla_for else [False, True],
        fp16_reference_ms=args.fp16_reference_ms,
        args=args,
        save=save,
    )
    save(entry)
    return 0


def bench_family(family_name: str, args: argparse.Namespace, report: Record) -> None:
    """Each precision in its own process: a fresh TensorFlow (no XLA or oneDNN caches
    from the previous configuration) and all of an sd-v1 build's memory given back."""
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)[family_name]
    warmup = 1 if args.quick else args.warmup
    fam: Record = {
        "size": list(FAMILY_SIZES[family_name]),
        "repeats": repeats,
        "warmup": warmup,
        "precisions": {},
    }
    report["families"][family_name] = fam
    if family_name in args.skip_xla_for:
        fam["xla_skipped"] = "--skip-xla-for " + family_name

    with tempfile.TemporaryDirectory(prefix="sdserve-bench-") as tmp:
        for precision in args.precisions:
            worker_out = Path(tmp) / f"{family_name}-{precision}.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                f"{family_name}:{precision}",
                "--worker-out",
                str(worker_out),
                "--repeats",
                str(repeats),
                "--warmup",
                str(warmup),
                "--skip-xla-for",
                ",".join(sorted(args.skip_xla_for)),
                "--fp16-max-slowdown",
                str(args.fp16_max_slowdown),
                "--fp16-max-step-s",
                str(args.fp16_max_step_s),
            ]
            f32 = fam["precisions"].get("float32", {}).get("xla", {}).get("off", {})
            if "unet_step" in f32:
                reference = f32["unet_step"]["separate_cfg"]["median_ms"]
                command += ["--fp16-reference-ms", str(reference)]
            started = time.perf_counter()
            rc = subprocess.run(command, check=False).returncode
            entry: Record = (
                json.loads(worker_out.read_text())
                if worker_out.exists()
                else {"status": "ok", "xla": {}}
            )
            entry["process_s"] = round(time.perf_counter() - started, 1)
            if rc != 0:
                why = (
                    "killed by SIGKILL (out of memory?)"
                    if rc == -signal.SIGKILL
                    else f"exited with status {rc}"
                )
                entry["status"] = f"error: measuring process {why}; see the log"
                done = ", ".join(f"xla {k}" for k in entry.get("xla", {})) or "nothing"
                entry["status"] += f"; measured before that: {done}"
                log(f"{family_name} {precision}: {entry['status']}")
            fam["precisions"][precision] = entry
            write_outputs(report, args)


# --------------------------------------------------------------------------- report


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
        f"Measured by `benchmarks/stages.py` on {m['date_utc']}. Random weights (timing does",
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
        "Larger sizes are closer to serving (edit `FAMILY_SIZES` in the script, e.g. sd-v1",
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


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--families", default="tiny,sd-v1", help="comma list of: " + ", ".join(FAMILY_SIZES)
    )
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma list of Keras dtype policies"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed repeats (default: sd-v1 7, tiny 30)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls after the first")
    parser.add_argument("--quick", action="store_true", help="few repeats, one warm-up")
    parser.add_argument(
        "--skip-xla-for", default="", help="comma list of families measured without XLA only"
    )
    parser.add_argument(
        "--fp16-max-slowdown",
        type=float,
        default=4.0,
        help="on CPU, skip mixed_float16 if a UNet step is this much slower than float32",
    )
    parser.add_argument(
        "--fp16-max-step-s",
        type=float,
        default=10.0,
        help="on CPU without a float32 reference, skip mixed_float16 above this step time",
    )
    parser.add_argument("--out", default="benchmarks/results/stages.md")
    # Internal: one family at one precision in a child process.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--fp16-reference-ms", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.skip_xla_for = {f.strip() for f in args.skip_xla_for.split(",") if f.strip()}
    for name in args.families:
        if name not in FAMILY_SIZES:
            parser.error(f"unknown family {name!r}; expected one of {', '.join(FAMILY_SIZES)}")
    for precision in args.precisions:
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if "mixed_float16" in args.precisions and "float32" in args.precisions:
        # float32 first: the CPU float16 check compares against it.
        args.precisions.remove("mixed_float16")
        args.precisions.append("mixed_float16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    started = time.perf_counter()
    from shared.execution import AUTO_STRATEGY

    shown_argv = sys.argv[1:] if argv is None else argv
    report: Record = {
        "command": shlex.join(
            ["KERAS_BACKEND=tensorflow", "python", "benchmarks/stages.py", *shown_argv]
        ),
        "machine": machine_description(),
        "auto_strategy": AUTO_STRATEGY,
        "settings": {
            "families": args.families,
            "precisions": args.precisions,
            "sizes": {f: list(FAMILY_SIZES[f]) for f in args.families},
            "steps_schedule": STEPS,
            "guidance_scale": GUIDANCE_SCALE,
            "prompt": PROMPT,
        },
        "families": {},
    }
    log(f"machine: {report['machine']['cpu_model']}, device {report['machine']['device']}")
    for family_name in args.families:
        bench_family(family_name, args, report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(report, args)
    log(f"done in {report['total_seconds']} s; wrote {args.out} and its .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
