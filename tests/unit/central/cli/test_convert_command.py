"""`sdserve convert`: its arguments and how it reports a refusal.

(Conversions themselves: tests/unit/shared/convert and tests/integration/shared/convert.)
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from central.cli import main


def test_family_and_out_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["convert", "model.safetensors"])
    assert exited.value.code == 2
    assert "--family" in capsys.readouterr().err


def test_a_pickle_is_refused_with_advice(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "v1-5-pruned.ckpt"
    source.write_bytes(b"")
    assert main(["convert", str(source), "--family", "sd-v1", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "sdserve convert: error: v1-5-pruned.ckpt is a pickle-based PyTorch file" in err
    assert "convert it to .safetensors first" in err
    assert not (tmp_path / "o").exists()


def test_a_wrong_checkpoint_names_the_tensor(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "model.safetensors"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: np.zeros((320, 1024), np.float16)}, str(source))
    out = tmp_path / "o"
    assert main(["convert", str(source), "--family", "sd-v1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{key} has shape (320, 1024), sd-v1 needs (320, 768)" in err
    assert "--family sd-v2" in err and not out.exists()


def test_components_are_checked(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["convert", str(tmp_path), "--family", "sd-v1", "--out", str(tmp_path / "o")]
    assert main([*argv, "--components", "unet"]) == 1
    assert "--components: ['unet']" in capsys.readouterr().err
