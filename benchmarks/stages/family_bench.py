"""One family at one precision, measured in a child process: each stage's first and
warm calls with XLA off and on, and CFG batched or separate."""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from shared.config import FamilyName, Precision

from benchmarks.harness import Record, log
from benchmarks.stages.common import (
    FAMILY_SIZES,
    GUIDANCE_SCALE,
    NEGATIVE_PROMPT,
    PROMPT,
    STEPS,
    measure,
    summarize,
)


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
            model=cast("FamilyName", family_name),
            weights="random",
            sizes=[self.size],
            xla="off",
            batched_cfg="off",
            precision=cast("Precision", precision),
        )
        self.family = get_family(family_name)
        self.strategy = ExecutionStrategy(
            xla=False, batched_cfg=False, precision=precision, device=self.device
        )
        self.text_stage = make_text_encoder(self.settings)
        self.decoder_stage = make_decoder(self.settings)
        self.loaded: Any = None

    def close(self) -> None:
        self.text_stage.shutdown()
        self.decoder_stage.shutdown()
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
        from shared.noise_schedule import ddim_timesteps, initial_noise
        from shared.sampler import Row, sample_step

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
