"""LoRA files: key layouts, alpha and scale, and the files refused.

(Merged models against diffusers' own LoRA loading: tests/integration/shared/convert/.)
"""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared.convert.lora import LoraSpec, lora_deltas, parse_lora_list
from shared.errors import WeightsError

Q = "text_model.encoder.layers.0.self_attn.q_proj"
KOHYA_Q = "lora_te_" + Q.replace(".", "_")
CONV = "down_blocks.0.resnets.0.conv1"
RANK = 2


def _pair(out_dim, in_dim, seed, kernel=()):
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((RANK, in_dim, *kernel), dtype=np.float32)
    up = rng.standard_normal((out_dim, RANK, *[1] * len(kernel)), dtype=np.float32)
    return down, up


def _close(ours, expected):
    """Equal up to float32 rounding, relative to the update's scale."""
    assert np.abs(ours - expected).max() <= 1e-6 * np.abs(expected).max()


def _write(tmp_path, tensors, metadata=None, name="lora.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_kohya_alpha_and_scale(tmp_path):
    down, up = _pair(768, 768, 0)
    path = _write(
        tmp_path,
        {
            f"{KOHYA_Q}.lora_down.weight": down,
            f"{KOHYA_Q}.lora_up.weight": up,
            f"{KOHYA_Q}.alpha": np.asarray(4.0, np.float32),
        },
    )
    deltas = lora_deltas(LoraSpec(path, 0.5), "sd-v1", "text_encoder")
    _close(deltas[f"{Q}.weight"], 0.5 * (4 / RANK) * up @ down)
    assert lora_deltas(LoraSpec(path, 0.5), "sd-v1", "diffusion_model") == {}


def test_kohya_convolution(tmp_path):
    down, up = _pair(320, 320, 1, kernel=(3, 3))
    stem = "lora_unet_" + CONV.replace(".", "_")
    path = _write(tmp_path, {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up})
    delta = lora_deltas(LoraSpec(path), "sd-v1", "diffusion_model")[f"{CONV}.weight"]
    expected = (up.reshape(320, RANK) @ down.reshape(RANK, -1)).reshape(320, 320, 3, 3)
    _close(delta, expected)  # no alpha: alpha = rank


@pytest.mark.parametrize(
    ("config", "factor"),
    [
        ({}, 1.0),  # alpha = rank
        ({"lora_alpha": 8}, 4.0),
        ({"lora_alpha": 8, "alpha_pattern": {"self_attn.q_proj": 2}}, 1.0),
        ({"lora_alpha": 8, "use_rslora": True}, 8 / math.sqrt(RANK)),
    ],
)
def test_diffusers_peft_layout_and_adapter_metadata(tmp_path, config, factor):
    down, up = _pair(768, 768, 2)
    module = "text_encoder." + Q.removeprefix("text_model.")  # transformers 5's names
    metadata = {
        "lora_adapter_metadata": json.dumps({f"text_encoder.{k}": v for k, v in config.items()})
    }
    path = _write(
        tmp_path,
        {f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up},
        metadata=metadata if config else None,
    )
    delta = lora_deltas(LoraSpec(path), "sd-v1", "text_encoder")[f"{Q}.weight"]
    _close(delta, factor * up @ down)


def test_old_diffusers_attention_processor_layout(tmp_path):
    down, up = _pair(320, 320, 3)
    stem = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
    path = _write(tmp_path, {f"{stem}.down.weight": down, f"{stem}.up.weight": up})
    deltas = lora_deltas(LoraSpec(path), "sd-v1", "diffusion_model")
    assert list(deltas) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"]


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"lora_unet_nowhere.lora_down.weight": (2, 4)}, "name no sd-v1 UNet or text encoder"),
        ({f"{KOHYA_Q}.dora_scale": (1, 768)}, "DoRA is not supported"),
        ({"lora_te1_text_model_x.lora_down.weight": (2, 4)}, "another model"),
        ({f"{KOHYA_Q}.lora_down.weight": (2, 768)}, "no matching down/up pair"),
        (
            {f"{KOHYA_Q}.lora_down.weight": (2, 768), f"{KOHYA_Q}.lora_up.weight": (1024, 2)},
            r"has shape \(1024, 2\)",
        ),
    ],
)
def test_files_that_are_not_plain_lora_for_the_family_are_refused(tmp_path, tensors, match):
    path = _write(tmp_path, {k: np.zeros(v, np.float32) for k, v in tensors.items()})
    with pytest.raises(WeightsError, match=match):
        lora_deltas(LoraSpec(path), "sd-v1", "text_encoder")


def test_the_list_setting(tmp_path):
    a = _write(tmp_path, {}, name="a.safetensors")
    b = _write(tmp_path, {}, name="b.safetensors")
    specs = parse_lora_list(f"{a}:0.8, {b} ,")
    assert specs == [LoraSpec(a, 0.8), LoraSpec(b, 1.0)]
    assert specs[0].label == "a.safetensors (scale 0.8)"
    with pytest.raises(ValueError, match="not a file"):
        parse_lora_list(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="pickle"):
        parse_lora_list(str(tmp_path / "lora.ckpt"))
    with pytest.raises(ValueError, match=r"must be \.safetensors"):
        parse_lora_list(str(tmp_path))
    with pytest.raises(ValueError, match="finite"):
        parse_lora_list(f"{a}:nan")
