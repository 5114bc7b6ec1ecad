"""Train the `tiny` family on synthetic scenes: VAE first, then text encoder + UNet.

    python -m training.train_tiny all    # vae, latents, decoder, diffusion, export, card
    python -m training.train_tiny vae --vae-steps 1000
    python -m training.train_tiny decoder --decoder-steps 1500   # sharper decoder
    python -m training.train_tiny diffusion --steps 4400
    python -m training.train_tiny export         # EMA weights -> shared/families/tiny_weights
    python -m training.train_tiny card           # loss curves, samples, held-out scores
    python -m training.train_tiny all --from-weights DIR --steps 2000 --text-encoder-from 0
        # fine-tune: text encoder + UNet start from exported weights, whose VAE is kept

Every phase is seeded and resumable: checkpoints (weights, optimizer state, EMA, step)
go to `--workdir` every `--checkpoint-every` steps and a rerun carries on from the last
one; batch `k` is drawn from a generator seeded by (seed, phase, k), so a resumed run
sees the same batches as an uninterrupted one. Loss curves go to `<workdir>/*.csv`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from training.phrasing import training_paraphrase
from training.recipe import (
    CAPTION_DROPOUT,
    DECODER_EDGE_WEIGHT,
    DECODER_NOISE,
    DEFAULT_WORKDIR,
    HIGH_NOISE_WEIGHT,
    LATENT_NOISE,
    LAYOUT_LOSS_WEIGHT,
    OFFSET_NOISE,
    PARAPHRASE_SHARE,
    SHAPE_LOSS_WEIGHT,
    TEXT_LR_SCALE,
    TEXT_POSITIONS_READ,
    TRAIN_SCENES,
    WEIGHTS_DIR,
)
from training.scenes import (
    IMAGE_SIZE,
    Scene,
    random_scene,
    render,
    shape_coverage,
    training_caption,
)

log = logging.getLogger("train_tiny")


def _scene_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _grown_by_one(mask: np.ndarray) -> np.ndarray:
    """A 2-D boolean mask grown by one cell in every direction, diagonals included."""
    height, width = mask.shape
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


class Dataset:
    """The training scenes, rendered once and cached in the work directory."""

    def __init__(self, workdir: Path, seed: int, count: int = TRAIN_SCENES) -> None:
        rng = _scene_rng(seed, 0)
        self.seed, self.workdir = seed, workdir
        self.scenes: list[Scene] = [random_scene(rng) for _ in range(count)]
        cache = workdir / f"scenes-{seed}-{count}.npy"
        if cache.is_file():
            self.images = np.load(cache, allow_pickle=False)
        else:
            started = time.monotonic()
            self.images = np.stack([render(s) for s in self.scenes])
            workdir.mkdir(parents=True, exist_ok=True)
            np.save(cache, self.images, allow_pickle=False)
            log.info("rendered %d scenes in %.1f s", count, time.monotonic() - started)

    def shape_regions(self, factor: int = 4) -> np.ndarray:
        """(N, 64/factor, 64/factor, 1) float32: 1 on the latent cells each scene's shape
        touches or borders, else 0 (cached next to the images)."""
        size = IMAGE_SIZE // factor

        def regions() -> np.ndarray:
            out = np.zeros((len(self.scenes), size, size, 1), np.float32)
            for i, scene in enumerate(self.scenes):
                cells = shape_coverage(scene).reshape(size, factor, size, factor).max(axis=(1, 3))
                # Grown by one cell: the edges around the shape are part of drawing it.
                out[i, ..., 0] = _grown_by_one(cells > 0.05)
            return out

        return self._cached("shape-regions", regions, factor)

    def shape_masks(self, factor: int = 4) -> np.ndarray:
        """(N, 64/factor, 64/factor, 1) float32: the share of each latent cell each
        scene's shape covers (cached next to the images)."""
        size = IMAGE_SIZE // factor

        def masks() -> np.ndarray:
            cells = [
                shape_coverage(s).reshape(size, factor, size, factor).mean(axis=(1, 3))
                for s in self.scenes
            ]
            return np.stack(cells)[..., None]

        return self._cached("shape-masks", masks, factor)

    def shape_edges(self) -> np.ndarray:
        """(N, 64, 64, 1) uint8: 1 on the pixels each scene's shape partly covers and
        their neighbours, i.e. along its outline (cached next to the images)."""

        def edges() -> np.ndarray:
            out = np.zeros((len(self.scenes), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
            for i, scene in enumerate(self.scenes):
                coverage = shape_coverage(scene)
                out[i, ..., 0] = _grown_by_one((coverage > 0.0) & (coverage < 1.0))
            return out

        return self._cached("shape-edges", edges)

    def _cached(self, name: str, compute: Callable[[], np.ndarray], *keys: int) -> np.ndarray:
        """`compute()`, saved in the work directory on first use and read back after."""
        suffix = "".join(f"-{key}" for key in (self.seed, len(self.scenes), *keys))
        cache = self.workdir / f"{name}{suffix}.npy"
        if cache.is_file():
            return np.load(cache, allow_pickle=False)
        array = compute()
        np.save(cache, array, allow_pickle=False)
        return array

    def pixels(self, index: np.ndarray) -> np.ndarray:
        """Images in [-1, 1], float32."""
        return self.images[index].astype(np.float32) / 127.5 - 1.0


class Checkpoint:
    """Weights, optimizer state, EMA weights and the step, as plain arrays on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, step: int, groups: dict[str, Sequence[Any]], seconds: float = 0.0) -> None:
        tmp = self.directory.with_name(self.directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, variables in groups.items():
            np.savez(tmp / f"{name}.npz", *[np.asarray(v.numpy()) for v in variables])
        (tmp / "step.json").write_text(json.dumps({"step": step, "seconds": seconds}))
        shutil.rmtree(self.directory, ignore_errors=True)
        tmp.rename(self.directory)

    def restore(self, groups: dict[str, Sequence[Any]]) -> int:
        if not (self.directory / "step.json").is_file():
            return 0
        for name, variables in groups.items():
            with np.load(self.directory / f"{name}.npz", allow_pickle=False) as arrays:
                values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
            if len(values) != len(variables):
                raise SystemExit(f"{self.directory}/{name}.npz does not match the model")
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
        return int(json.loads((self.directory / "step.json").read_text())["step"])

    def seconds(self) -> float:
        """Training time summed over every run that led to this checkpoint."""
        path = self.directory / "step.json"
        return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.is_file() else 0.0


class LossLog:
    """Appends (step, losses...) rows to a CSV, dropping rows past a resumed step."""

    def __init__(self, path: Path, columns: Sequence[str], resume_step: int) -> None:
        self.path = path
        rows: list[list[str]] = []
        if path.is_file() and resume_step:
            with path.open() as handle:
                rows = [r for r in csv.reader(handle)][1:]
            rows = [r for r in rows if int(r[0]) <= resume_step]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", *columns])
            writer.writerows(rows)

    def append(self, step: int, values: Sequence[float]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step, *(f"{v:.6f}" for v in values)])


def _optimizer(learning_rate: float, steps: int) -> Any:
    import keras

    warmup = min(200, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(steps - warmup, 1),
        alpha=0.05,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(schedule, weight_decay=1e-4, clipnorm=1.0)


def _run(
    name: str,
    workdir: Path,
    steps: int,
    checkpoint_every: int,
    groups: dict[str, Sequence[Any]],
    step_fn: Callable[[int], Sequence[float]],
    columns: Sequence[str],
    batch: int,
    stop_after: int | None = None,
) -> None:
    """The loop every phase shares: resume, step, log, checkpoint.

    `stop_after` ends this run after that many steps (checkpointed); a rerun carries on,
    so a long phase can be trained in slots."""
    checkpoint = Checkpoint(workdir / f"{name}-checkpoint")
    start = checkpoint.restore(groups)
    earlier_seconds = checkpoint.seconds()
    if start >= steps:
        log.info("%s: already trained for %d steps", name, start)
        return
    loss_log = LossLog(workdir / f"{name}-loss.csv", columns, start)
    last = steps if stop_after is None else min(steps, start + stop_after)
    log.info("%s: steps %d..%d of %d", name, start, last, steps)
    started, running = time.monotonic(), np.zeros(len(columns))
    for step in range(start + 1, last + 1):
        values = np.asarray(step_fn(step), dtype=np.float64)
        running = values if step == start + 1 else 0.9 * running + 0.1 * values
        loss_log.append(step, values.tolist())
        if step % 50 == 0 or step == steps:
            rate = (step - start) / (time.monotonic() - started)
            log.info(
                "%s step %d/%d %s (%.2f steps/s)",
                name,
                step,
                steps,
                " ".join(f"{c}={v:.4f}" for c, v in zip(columns, running, strict=True)),
                rate,
            )
        if step % checkpoint_every == 0 or step == last:
            checkpoint.save(step, groups, earlier_seconds + time.monotonic() - started)
    if last < steps:
        log.info("%s: stopped at step %d of %d; rerun to carry on", name, last, steps)
        return
    seconds = earlier_seconds + time.monotonic() - started
    summary = {"steps": steps, "batch": batch, "minutes": round(seconds / 60, 1)}
    (workdir / f"{name}-time.json").write_text(json.dumps(summary) + "\n")


def train_vae(args: argparse.Namespace) -> None:
    import keras
    import tensorflow as tf

    from shared.families.tiny import TinyFamily

    keras.utils.set_random_seed(args.seed)
    family = TinyFamily()
    encoder, decoder = family.build_image_encoder(), family.build_decoder(64, 64)
    data = Dataset(args.workdir, args.seed, args.scenes)
    variables = [*encoder.trainable_variables, *decoder.trainable_variables]
    optimizer = _optimizer(args.vae_lr, args.vae_steps)
    optimizer.build(variables)

    @tf.function(jit_compile=args.xla)  # type: ignore[untyped-decorator]
    def step(images: tf.Tensor, noise: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            latent = encoder(images, training=True)
            decoded = decoder(latent + LATENT_NOISE * noise, training=True)
            mse = tf.reduce_mean(tf.square(decoded - images))
            l1 = tf.reduce_mean(tf.abs(decoded - images))
            # Keep latents near unit variance, the scale the noise schedule assumes.
            scale = tf.square(tf.reduce_mean(tf.square(latent)) - 1.0)
            loss = mse + l1 + 0.01 * scale
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return mse, l1, tf.reduce_mean(tf.square(latent))

    def one_step(k: int) -> Sequence[float]:
        rng = _scene_rng(args.seed, 1, k)
        index = rng.integers(len(data.scenes), size=args.vae_batch)
        noise = rng.standard_normal((args.vae_batch, 16, 16, 4), dtype=np.float32)
        return [float(v) for v in step(data.pixels(index), noise)]

    groups = {
        "encoder": encoder.weights,
        "decoder": decoder.weights,
        "optimizer": optimizer.variables,
    }
    columns = ["mse", "l1", "latent_var"]
    _run(
        "vae",
        args.workdir,
        args.vae_steps,
        args.checkpoint_every,
        groups,
        one_step,
        columns,
        args.vae_batch,
        args.stop_after,
    )


def _load_exported(model: Any, directory: Path, component: str) -> None:
    """Weights of `component` from an exported directory, checked against its SHA256SUMS."""
    from shared.weights import CHECKSUMS_FILE, sha256_of

    path = directory / f"{component}.weights.h5"
    lines = (directory / CHECKSUMS_FILE).read_text().splitlines()
    sums = {name: digest for digest, name in (line.split() for line in lines)}
    if sums.get(path.name) != sha256_of(path):
        raise SystemExit(f"{path} does not match {directory / CHECKSUMS_FILE}")
    model.load_weights(str(path))


def _load_vae(
    workdir: Path, *, tuned_decoder: bool = True, from_weights: Path | None = None
) -> tuple[Any, Any]:
    """The VAE, with the fine-tuned decoder when that phase has run; with `from_weights`,
    the exported one there (a fine-tune keeps its VAE)."""
    from shared.families.tiny import TinyFamily

    family = TinyFamily()
    encoder, decoder = family.build_image_encoder(), family.build_decoder(64, 64)
    if from_weights is not None:
        _load_exported(encoder, from_weights, "image_encoder")
        _load_exported(decoder, from_weights, "decoder")
        return encoder, decoder
    Checkpoint(workdir / "vae-checkpoint").restore(
        {"encoder": encoder.weights, "decoder": decoder.weights}
    )
    if tuned_decoder:
        Checkpoint(workdir / "decoder-checkpoint").restore({"decoder": decoder.weights})
    return encoder, decoder


def train_decoder(args: argparse.Namespace) -> None:
    """Fine-tune the decoder alone on the frozen encoder's (cached) latents.

    The encoder, and so every latent the UNet learns from, stays as it is; only the
    reconstruction gets sharper (edges between saturated colours need it most).
    """
    import keras
    import tensorflow as tf

    latents = encode_latents(args)
    data = Dataset(args.workdir, args.seed, args.scenes)
    edges = data.shape_edges()
    keras.utils.set_random_seed(args.seed + 2)
    _, decoder = _load_vae(args.workdir, tuned_decoder=False)
    variables = decoder.trainable_variables
    optimizer = _optimizer(args.decoder_lr, args.decoder_steps)
    optimizer.build(variables)

    @tf.function(jit_compile=args.xla)  # type: ignore[untyped-decorator]
    def step(latent: tf.Tensor, images: tf.Tensor, edge: tf.Tensor) -> tuple[tf.Tensor, ...]:
        weight = 1.0 + DECODER_EDGE_WEIGHT * tf.cast(edge, tf.float32)
        with tf.GradientTape() as tape:
            difference = decoder(latent, training=True) - images
            squared, absolute = tf.square(difference), tf.abs(difference)
            mse, l1 = tf.reduce_mean(squared), tf.reduce_mean(absolute)
            loss = tf.reduce_mean(weight * (squared + absolute)) / tf.reduce_mean(weight)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return mse, l1

    def one_step(k: int) -> Sequence[float]:
        rng = _scene_rng(args.seed, 3, k)
        index = rng.integers(len(data.scenes), size=args.vae_batch)
        # Half the rows see slightly noisy latents, as sampled latents are never exact.
        noise = rng.standard_normal(latents[index].shape, dtype=np.float32)
        noise[: args.vae_batch // 2] = 0.0
        noisy = latents[index] + DECODER_NOISE * noise
        return [float(v) for v in step(noisy, data.pixels(index), edges[index])]

    groups = {"decoder": decoder.weights, "optimizer": optimizer.variables}
    _run(
        "decoder",
        args.workdir,
        args.decoder_steps,
        args.checkpoint_every,
        groups,
        one_step,
        ["mse", "l1"],
        args.vae_batch,
        args.stop_after,
    )


def encode_latents(args: argparse.Namespace) -> np.ndarray:
    """Every training scene's latent under the trained encoder (cached)."""
    cache = args.workdir / f"latents-{args.seed}-{args.scenes}.npy"
    if cache.is_file():
        return np.load(cache, allow_pickle=False)
    data = Dataset(args.workdir, args.seed, args.scenes)
    encoder, _ = _load_vae(args.workdir, from_weights=args.from_weights)
    parts = [
        np.asarray(encoder(data.pixels(np.arange(i, min(i + 512, len(data.scenes))))))
        for i in range(0, len(data.scenes), 512)
    ]
    latents = np.concatenate(parts)
    np.save(cache, latents, allow_pickle=False)
    log.info("latents: mean %.3f std %.3f", latents.mean(), latents.std())
    return latents


def leading_tokens(token_ids: np.ndarray, end_token: int, count: int) -> np.ndarray:
    """The first `count` positions of each row; every prompt must end within them."""
    ends_within = (token_ids[:, :count] == end_token).any(axis=1)
    if not ends_within.all():
        raise ValueError(f"a training caption is over {count} tokens; raise TEXT_POSITIONS_READ")
    return token_ids[:, :count]


def context_of_all_positions(leading: Any, max_tokens: int) -> Any:
    """The tiny text encoder's output on all positions from its output on the leading ones:
    past the prompt's end every position holds the same state, so the last one repeats."""
    import tensorflow as tf

    padding = tf.repeat(leading[:, -1:], max_tokens - leading.shape[1], axis=1)
    return tf.concat([leading, padding], axis=1)


def _caption(scene: Scene, rng: np.random.Generator, paraphrase_share: float) -> str:
    """A training caption: in the scenes' own grammar, or worded another way people word it."""
    if rng.random() < paraphrase_share:
        return training_paraphrase(scene, rng)
    return training_caption(scene, rng)


def train_diffusion(args: argparse.Namespace) -> None:
    import keras
    import tensorflow as tf

    from shared.families.tiny import TinyFamily
    from shared.noise_schedule import alphas_cumprod, timestep_embedding
    from shared.tokenizer import PromptTokenizer, find_clip_vocab

    latents = encode_latents(args)
    data = Dataset(args.workdir, args.seed, args.scenes)
    regions, masks = data.shape_regions(), data.shape_masks()
    keras.utils.set_random_seed(args.seed + 1)
    family = TinyFamily()
    text_encoder = family.build_text_encoder(positions_read=TEXT_POSITIONS_READ)
    unet = family.build_diffusion_model(64, 64)
    if args.from_weights is not None:  # a fine-tune; a checkpoint of this run still wins
        _load_exported(text_encoder, args.from_weights, "text_encoder")
        _load_exported(unet, args.from_weights, "diffusion_model")
    # The same UNet, also answering its layout map (shared layers, nothing new to export).
    unet_and_layout = keras.Model(
        unet.inputs, [unet.output, unet.get_layer("layout_resize").output]
    )
    tokenizer = PromptTokenizer(find_clip_vocab())
    tokens_of: dict[str, list[int]] = {}

    def tokens(caption: str) -> list[int]:
        if caption not in tokens_of:
            tokens_of[caption] = tokenizer.tokenize(caption).tokens
        return tokens_of[caption]

    embeddings = tf.constant(timestep_embedding(range(1000)))
    alphas = tf.constant(np.asarray(alphas_cumprod(), np.float32))
    read = np.arange(TEXT_POSITIONS_READ, dtype=np.int32)
    positions = tf.constant(np.tile(read, (args.batch, 1)))
    text_variables = text_encoder.trainable_variables
    unet_variables = unet.trainable_variables
    variables = [*text_variables, *unet_variables]
    optimizer = _optimizer(args.lr, args.steps)
    optimizer.build(unet_variables)
    # The text encoder learns slower and only once the UNet reads its (random, but
    # prompt-dependent) features: trained together from the first step, it first learns
    # to say the same for every prompt, which lowers the loss of an untrained UNet.
    text_optimizer = _optimizer(args.lr * TEXT_LR_SCALE, args.steps)
    text_optimizer.build(text_variables)
    ema = [tf.Variable(v.value, trainable=False) for v in variables]

    def make_step(train_text: bool) -> Callable[..., tf.Tensor]:
        @tf.function(jit_compile=args.xla)  # type: ignore[untyped-decorator]
        def step(
            latent: tf.Tensor,
            token_ids: tf.Tensor,
            t: tf.Tensor,
            noise: tf.Tensor,
            region: tf.Tensor,
            mask: tf.Tensor,
            decay: tf.Tensor,
        ) -> tuple[tf.Tensor, tf.Tensor]:
            a = tf.reshape(tf.gather(alphas, t), (-1, 1, 1, 1))
            noisy = tf.sqrt(a) * latent + tf.sqrt(1.0 - a) * noise
            # High-noise steps decide the background and the shape's colour, and are where
            # the prompt matters; plain noise-prediction loss hardly weighs them.
            weight = 1.0 + tf.minimum((1.0 - a) / a, HIGH_NOISE_WEIGHT - 1.0)
            weight = weight * (1.0 + SHAPE_LOSS_WEIGHT * region)
            with tf.GradientTape() as tape:
                leading = text_encoder({"tokens": token_ids, "positions": positions}, training=True)
                context = context_of_all_positions(leading, family.spec.max_tokens)
                inputs = {
                    "latent": noisy,
                    "timestep_embedding": tf.gather(embeddings, t),
                    "context": context,
                }
                predicted, layout = unet_and_layout(inputs, training=True)
                error = tf.square(predicted - noise)
                mse = tf.reduce_mean(weight * error) / tf.reduce_mean(weight)
                layout_mse = tf.reduce_mean(tf.square(layout[..., :1] - mask))
                loss = mse + LAYOUT_LOSS_WEIGHT * layout_mse
            # A frozen text encoder needs no gradients: its backward pass is a third of a step.
            grads = tape.gradient(loss, variables if train_text else unet_variables)
            unet_grads = grads[len(grads) - len(unet_variables) :]
            optimizer.apply_gradients(zip(unet_grads, unet_variables, strict=True))
            if train_text:
                text_grads = grads[: len(text_variables)]
                text_optimizer.apply_gradients(zip(text_grads, text_variables, strict=True))
            for average, variable in zip(ema, variables, strict=True):
                average.assign(decay * average + (1.0 - decay) * variable.value)
            return mse, layout_mse

        return step

    steps = {False: make_step(False), True: make_step(True)}

    def one_step(k: int) -> Sequence[float]:
        rng = _scene_rng(args.seed, 2, k)
        index = rng.integers(len(data.scenes), size=args.batch)
        captions = [
            ""
            if rng.random() < CAPTION_DROPOUT
            else _caption(data.scenes[i], rng, args.paraphrase_share)
            for i in index
        ]
        token_ids = np.array([tokens(c) for c in captions], np.int32)
        token_ids = leading_tokens(token_ids, family.spec.pad_token, TEXT_POSITIONS_READ)
        t = rng.integers(1000, size=args.batch).astype(np.int32)
        noise = rng.standard_normal(latents[index].shape, dtype=np.float32)
        # Offset noise: a per-image, per-channel constant in the noise. Even at the last
        # timestep a 16x16 latent leaks its mean colour through sqrt(alpha) x0, and a model
        # that reads the colour from there picks it from the sampler's random start; with
        # an offset it cannot trust that mean and must take the colour from the prompt.
        noise += OFFSET_NOISE * rng.standard_normal((args.batch, 1, 1, 4), dtype=np.float32)
        decay = np.float32(min(args.ema, (1 + k) / (10 + k)))
        step = steps[k > args.text_encoder_from]
        losses = step(latents[index], token_ids, t, noise, regions[index], masks[index], decay)
        return [float(v) for v in losses]

    groups = {
        "text_encoder": text_encoder.weights,
        "unet": unet.weights,
        "optimizer": optimizer.variables,
        "text_optimizer": text_optimizer.variables,
        "ema": ema,
    }
    _run(
        "diffusion",
        args.workdir,
        args.steps,
        args.checkpoint_every,
        groups,
        one_step,
        ["mse", "layout_mse"],
        args.batch,
        args.stop_after,
    )


def export(args: argparse.Namespace) -> None:
    """EMA text encoder and UNet, plus the VAE, as `<component>.weights.h5` + SHA256SUMS."""
    import tensorflow as tf

    from shared.families.tiny import TinyFamily
    from shared.weights import CHECKSUMS_FILE, sha256_of

    family = TinyFamily()
    encoder, decoder = _load_vae(args.workdir, from_weights=args.from_weights)
    text_encoder, unet = family.build_text_encoder(), family.build_diffusion_model(64, 64)
    variables = [*text_encoder.trainable_variables, *unet.trainable_variables]
    ema = [tf.Variable(v.value, trainable=False) for v in variables]
    Checkpoint(args.workdir / "diffusion-checkpoint").restore(
        {"text_encoder": text_encoder.weights, "unet": unet.weights, "ema": ema}
    )
    for variable, average in zip(variables, ema, strict=True):
        variable.assign(average)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    models = {
        "text_encoder": text_encoder,
        "diffusion_model": unet,
        "decoder": decoder,
        "image_encoder": encoder,
    }
    lines = []
    for component, model in models.items():
        path = out / f"{component}.weights.h5"
        model.save_weights(str(path))
        lines.append(f"{sha256_of(path)}  {path.name}")
    (out / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n")
    log.info("exported to %s", out)


def _write_card(args: argparse.Namespace) -> None:
    """The model card for this run's work directory and exported weights."""
    from training.model_card import write_card

    write_card(
        args.workdir,
        args.out,
        train_scenes=args.scenes,
        ema_decay=args.ema,
        text_positions_read=TEXT_POSITIONS_READ,
        base=args.from_weights,
        learning_rate=args.lr,
        paraphrase_share=args.paraphrase_share,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "phase", choices=["all", "vae", "latents", "decoder", "diffusion", "export", "card"]
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=TRAIN_SCENES, help="training scenes")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="steps this run trains before it stops"
    )
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--decoder-steps", type=int, default=1500)
    parser.add_argument("--decoder-lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=4400, help="diffusion steps")
    parser.add_argument("--batch", type=int, default=64, help="diffusion batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="diffusion learning rate")
    # A window of ~200 steps: with 0.999 (~1000) the exported average lagged the trained
    # weights (session 8's run: held-out colour and shape 71 % EMA, 74 % raw).
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument(
        "--text-encoder-from", type=int, default=1000, help="step the text encoder starts learning"
    )
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument(
        "--paraphrase-share",
        type=float,
        default=PARAPHRASE_SHARE,
        help="share of captions worded by training.phrasing instead of the scenes' grammar",
    )
    parser.add_argument(
        "--from-weights",
        type=Path,
        default=None,
        help="fine-tune: start the text encoder and UNet from this exported weights "
        "directory and keep its VAE (the vae and decoder phases are skipped)",
    )
    args = parser.parse_args(argv)
    if args.phase == "all" and args.stop_after is not None:
        parser.error("--stop-after applies to one phase: the next phase needs this one done")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    phases: dict[str, Callable[[argparse.Namespace], Any]] = {
        "vae": train_vae,
        "latents": encode_latents,
        "decoder": train_decoder,
        "diffusion": train_diffusion,
        "export": export,
    }
    if args.phase == "card":
        _write_card(args)
        return
    # The decoder fine-tune is part of the pipeline: export takes the tuned decoder.
    everything = ["vae", "latents", "decoder", "diffusion", "export"]
    if args.from_weights is not None:
        if args.from_weights.resolve() == args.out.resolve():
            parser.error("--from-weights must not be --out: export overwrites it; copy it first")
        everything = ["latents", "diffusion", "export"]
    started = time.monotonic()
    for name in everything if args.phase == "all" else [args.phase]:
        phases[name](args)
    if args.phase == "all":
        # Wall time of this run (a resumed run counts only its own part).
        minutes = {"minutes": round((time.monotonic() - started) / 60, 1)}
        (args.workdir / "all-time.json").write_text(json.dumps(minutes) + "\n")
        _write_card(args)


if __name__ == "__main__":
    main()
