"""`sdserve convert`'s refusals: each names what is wrong, and nothing is written.

(A whole conversion, checked by numbers against diffusers, is in
tests/integration/shared/convert/; these sources are a few tensors each.)
"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared.convert.convert import convert
from shared.convert.sources import open_source
from shared.errors import WeightsError

UNET = "model.diffusion_model."


def _single(tmp_path, tensors, name="model.safetensors"):
    path = tmp_path / name
    save_file({k: np.zeros(v, np.float16) for k, v in tensors.items()}, str(path))
    return path


def _convert_fails(source, out, match, **kwargs):
    with pytest.raises(WeightsError, match=match) as caught:
        convert(source, kwargs.pop("family", "sd-v1"), out, **kwargs)
    assert not out.exists()
    return str(caught.value)


@pytest.mark.parametrize("name", ["v1-5.ckpt", "model.bin", "unet.pt", "weights.pth"])
def test_pickles_are_refused_unopened(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(b"not even opened")
    message = _convert_fails(source, tmp_path / "out", "pickle")
    assert name in message and "safetensors" in message


def test_a_diffusers_folder_of_pickles_is_refused(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"")
    _convert_fails(tmp_path / "sd", tmp_path / "out", r"unet/diffusion_pytorch_model\.bin .*pickle")


def test_shape_mismatch_and_missing_tensors_are_named(tmp_path):
    source = _single(
        tmp_path,
        {f"{UNET}input_blocks.0.0.weight": (320, 9, 3, 3), f"{UNET}input_blocks.0.0.bias": (320,)},
    )
    message = _convert_fails(source, tmp_path / "out", "cannot convert model.safetensors as sd-v1")
    assert message.startswith(
        f"cannot convert model.safetensors as sd-v1: diffusion_model: {UNET}input_blocks.0.0."
        "weight has shape (320, 9, 3, 3), sd-v1 needs (320, 4, 3, 3); "
    )
    assert (
        f"diffusion_model: 684 of its 686 tensors are missing, e.g. {UNET}time_embed.0.weight"
        in message
    )
    assert "text_encoder: 196 of its 196 tensors are missing" in message
    assert "It is an inpainting UNet (9 input channels)" in message
    assert message.endswith("Nothing was written.")


def test_a_checkpoint_of_the_other_family_says_which_to_use(tmp_path):
    key = f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    source = _single(tmp_path, {key: (320, 1024)})
    message = _convert_fails(source, tmp_path / "out", "--family sd-v2")
    assert f"{key} has shape (320, 1024), sd-v1 needs (320, 768)" in message


def test_sdxl_is_named_as_such(tmp_path):
    source = _single(
        tmp_path,
        {f"{UNET}label_emb.0.0.weight": (1280, 2816), f"{UNET}input_blocks.0.0.bias": (320,)},
    )
    _convert_fails(source, tmp_path / "out", "looks like an SDXL", family="sd-v2")


def test_a_file_without_sd_tensors_is_not_a_checkpoint(tmp_path):
    source = _single(tmp_path, {"lora_unet_x.lora_down.weight": (4, 320)}, name="lora.safetensors")
    _convert_fails(source, tmp_path / "out", "not an original-layout Stable Diffusion checkpoint")


def test_a_non_empty_out_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not empty; pass --overwrite"):
        convert(tmp_path / "missing", "sd-v1", out)
    assert (out / "keep.txt").read_text() == "mine"


def test_families_and_components_are_checked(tmp_path):
    with pytest.raises(WeightsError, match="convert makes sd-v1 or sd-v2"):
        convert(tmp_path, "tiny", tmp_path / "out")
    with pytest.raises(WeightsError, match="components"):
        convert(tmp_path, "sd-v1", tmp_path / "out", components=["unet"])


def _folder(tmp_path, files):
    root = tmp_path / "sd"
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors"):
            save_file({"conv_in.bias": np.zeros(320, np.float16)}, str(path))
        else:
            path.write_text(json.dumps(content))
    return root


def test_full_precision_wins_over_a_variant(tmp_path):
    root = _folder(
        tmp_path,
        {
            "unet/diffusion_pytorch_model.fp16.safetensors": None,
            "unet/diffusion_pytorch_model.safetensors": None,
        },
    )
    with open_source(root) as source:
        assert list(source.files) == ["unet/diffusion_pytorch_model.safetensors"]


def test_two_unknown_variants_are_refused(tmp_path):
    root = _folder(
        tmp_path,
        {"unet/model.a.safetensors": None, "unet/model.b.safetensors": None},
    )
    with pytest.raises(WeightsError, match="several weight variants"):
        open_source(root)


def test_an_sdxl_vae_is_refused(tmp_path):
    root = _folder(
        tmp_path,
        {"unet/x.safetensors": None, "vae/config.json": {"scaling_factor": 0.13025}},
    )
    with pytest.raises(WeightsError, match=r"scaling_factor 0\.13025"):
        open_source(root)


def test_the_scheduler_says_the_prediction_type(tmp_path):
    root = _folder(
        tmp_path,
        {
            "unet/x.safetensors": None,
            "scheduler/scheduler_config.json": {"prediction_type": "v_prediction"},
        },
    )
    with open_source(root) as source:
        assert source.prediction_type == "v_prediction"
    (root / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "sample"}')
    with pytest.raises(WeightsError, match="'sample' is not one sdserve samples"):
        open_source(root)
