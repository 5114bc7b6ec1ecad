"""What the reference tests of `sdserve convert` share: inputs, tolerances, comparisons,
and keras-cv models built through the same path a service takes (shared.models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SIZE = 128  # the smallest size sd-v1/sd-v2 serve: 16x16 latents, 128x128 images
TIMESTEP = 601
TOKEN_IDS = [49406, 320, 3638, 539, 320, 1882, 593, 1746, 269, 49407]  # start, text, end


def token_ids(pad: int = 49407) -> np.ndarray:
    """(1, 77) int32 ids, padded as keras-cv pads prompts."""
    ids = TOKEN_IDS + [pad] * (77 - len(TOKEN_IDS))
    return np.asarray([ids], dtype=np.int32)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| over max |reference|: the worst error as a fraction of the
    output's scale."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def inputs(family: str, seed: int) -> dict[str, np.ndarray]:
    """Inputs of every component, drawn once (NHWC, as keras-cv takes them)."""
    from shared.families import get_family

    spec = get_family(family).spec
    rng = np.random.default_rng(seed)
    latent = SIZE // 8
    return {
        "tokens": token_ids(),
        "latent": rng.standard_normal((1, latent, latent, 4), dtype=np.float32),
        "context": rng.standard_normal((1, 77, spec.context_dim), dtype=np.float32),
        "image": rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32),
    }


class KerasModels:
    """keras-cv components built and loaded by shared.models.build_component from a
    converted directory, once each (a UNet takes a minute to build on a laptop CPU)."""

    def __init__(self, family: str, weights: Path) -> None:
        from shared.config import Settings

        self.family = family
        self.settings = Settings(
            model=family,
            weights=str(weights),
            sizes=[(SIZE, SIZE)],
            xla="off",
            precision="float32",
        )
        self._built: dict[str, Any] = {}

    def __call__(self, component: str) -> Any:
        if component not in self._built:
            from shared.families import get_family
            from shared.models import build_component

            family = get_family(self.family)
            model, origin = build_component(
                family, component, (SIZE, SIZE), self.settings, "float32"
            )
            self._built[component] = (model, origin)
        return self._built[component]


def run_keras(component: str, model: Any, x: dict[str, np.ndarray]) -> np.ndarray:
    """The keras-cv model called eagerly (tracing a graph would only cost time here)."""
    from shared.noise_schedule import timestep_embedding

    if component == "text_encoder":
        positions = np.arange(77, dtype=np.int32)[None]
        out = model({"tokens": x["tokens"], "positions": positions}, training=False)
    elif component == "diffusion_model":
        inputs = {
            "latent": x["latent"],
            "timestep_embedding": timestep_embedding([TIMESTEP]),
            "context": x["context"],
        }
        out = model(inputs, training=False)
    elif component == "decoder":
        out = model(x["latent"], training=False)
    else:
        out = model(x["image"], training=False)
    return np.asarray(out, dtype=np.float32)


def run_torch(component: str, model: Any, x: dict[str, np.ndarray]) -> np.ndarray:
    """The same computation in diffusers / transformers, NHWC out."""
    import torch

    def nchw(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def nhwc(t: Any) -> np.ndarray:
        return t.numpy().transpose(0, 2, 3, 1)

    with torch.no_grad():
        if component == "text_encoder":
            ids = torch.from_numpy(x["tokens"].astype(np.int64))
            return model(input_ids=ids).last_hidden_state.numpy()
        if component == "diffusion_model":
            out = model(
                nchw(x["latent"]),
                torch.tensor([TIMESTEP]),
                encoder_hidden_states=torch.from_numpy(x["context"]),
            ).sample
            return nhwc(out)
        if component == "decoder":  # keras-cv's decoder divides by the scaling factor
            return nhwc(model.decode(nchw(x["latent"]) / 0.18215).sample)
        return nhwc(model.encode(nchw(x["image"])).latent_dist.mean * 0.18215)
