"""The training script's promises, at toy sizes: seeded and resumable.

Every phase runs through the same loop (`train_tiny._run`); the VAE phase, the quickest to
build and trace, stands for them all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import recipe, train_tiny
from training.scenes import shape_coverage

# A few scenes and steps: what matters is that runs are repeatable, not what they learn.
TOY = ["--scenes", "64", "--vae-batch", "4", "--batch", "4", "--checkpoint-every", "2"]


def train(workdir: Path, steps: int, *extra: str) -> None:
    train_tiny.main(["vae", "--workdir", str(workdir), *TOY, "--vae-steps", str(steps), *extra])


def checkpoint_arrays(workdir: Path, phase: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for path in sorted((workdir / f"{phase}-checkpoint").glob("*.npz")):
        with np.load(path, allow_pickle=False) as group:
            arrays.update({f"{path.stem}/{k}": group[k] for k in group.files})
    return arrays


def test_a_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    whole_dir, resumed_dir = tmp_path / "uninterrupted", tmp_path / "resumed"
    train(whole_dir, 4)
    train(resumed_dir, 4, "--stop-after", "3")
    assert json.loads((resumed_dir / "vae-checkpoint" / "step.json").read_text())["step"] == 3
    assert not (resumed_dir / "vae-time.json").exists()  # not finished yet
    train(resumed_dir, 4)  # carries on from step 3
    resumed, whole = checkpoint_arrays(resumed_dir, "vae"), checkpoint_arrays(whole_dir, "vae")
    assert resumed.keys() == whole.keys()
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    loss = (resumed_dir / "vae-loss.csv").read_text()
    assert loss == (whole_dir / "vae-loss.csv").read_text()
    assert len(loss.splitlines()) == 1 + 4  # header, then one row per step, none twice


def test_all_refuses_to_stop_a_phase_half_way(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        train_tiny.main(["all", "--workdir", str(tmp_path), "--stop-after", "1"])


def test_shape_regions_cover_each_shape_and_a_cell_around_it(tmp_path: Path) -> None:
    data = train_tiny.Dataset(tmp_path, seed=0, count=8)
    regions = data.shape_regions()
    assert regions.shape == (8, 16, 16, 1) and set(np.unique(regions)) <= {0.0, 1.0}
    for scene, region in zip(data.scenes, regions[..., 0], strict=True):
        cells = shape_coverage(scene).reshape(16, 4, 16, 4).max(axis=(1, 3)) > 0.05
        assert region[cells].all()  # every cell the shape touches
        ys, xs = np.nonzero(cells)
        grown = np.zeros_like(cells)
        grown[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2] = True
        assert not region[~grown].any()  # nothing beyond one cell around it
        assert region.sum() > cells.sum()  # and the border is in
    cached = train_tiny.Dataset(tmp_path, seed=0, count=8).shape_regions()
    np.testing.assert_array_equal(cached, regions)


def test_shape_masks_are_each_cells_share_of_the_shape(tmp_path: Path) -> None:
    data = train_tiny.Dataset(tmp_path, seed=0, count=8)
    masks = data.shape_masks()
    assert masks.shape == (8, 16, 16, 1)
    for scene, mask in zip(data.scenes, masks[..., 0], strict=True):
        coverage = shape_coverage(scene)
        # Each cell is the mean of its 4x4 pixels; the whole mask holds the shape's area.
        np.testing.assert_allclose(mask[2, 3], coverage[8:12, 12:16].mean(), rtol=1e-6)
        np.testing.assert_allclose(mask.sum() * 16, coverage.sum(), rtol=1e-5)
    np.testing.assert_array_equal(train_tiny.Dataset(tmp_path, 0, 8).shape_masks(), masks)


def test_shape_edges_follow_the_outline_and_leave_the_inside_out(tmp_path: Path) -> None:
    data = train_tiny.Dataset(tmp_path, seed=0, count=8)
    edges = data.shape_edges()
    assert edges.shape == (8, 64, 64, 1) and edges.dtype == np.uint8
    for scene, edge in zip(data.scenes, edges[..., 0].astype(bool), strict=True):
        coverage = shape_coverage(scene)
        assert edge[(coverage > 0) & (coverage < 1)].all()  # every partly covered pixel
        assert not edge[coverage == 1].all()  # not the whole shape: its inside is out
        # Nothing further than one pixel from the shape.
        near = np.zeros_like(edge)
        ys, xs = np.nonzero(coverage > 0)
        near[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2] = True
        assert not edge[~near].any()
    np.testing.assert_array_equal(train_tiny.Dataset(tmp_path, 0, 8).shape_edges(), edges)


def test_the_text_encoder_on_leading_positions_equals_it_on_all_77() -> None:
    # Training runs the text encoder on TEXT_POSITIONS_READ positions and repeats the last;
    # the UNet must see what the served encoder (all 77 positions) would give it.
    import keras

    from shared.families.tiny import TinyFamily
    from shared.tokenizer import PromptTokenizer, find_clip_vocab

    family, tokenizer = TinyFamily(), PromptTokenizer(find_clip_vocab())
    keras.utils.set_random_seed(3)
    served = family.build_text_encoder()
    keras.utils.set_random_seed(3)
    trained = family.build_text_encoder(positions_read=recipe.TEXT_POSITIONS_READ)
    captions = [
        "",
        "a red square",
        "a large yellow circle at the top left on a white and black background",
    ]
    tokens = np.array([tokenizer.tokenize(c).tokens for c in captions], np.int32)
    read = recipe.TEXT_POSITIONS_READ
    leading = train_tiny.leading_tokens(tokens, family.spec.pad_token, read)
    short = trained({"tokens": leading, "positions": np.tile(np.arange(read), (3, 1))})
    context = np.asarray(train_tiny.context_of_all_positions(short, family.spec.max_tokens))
    full = np.asarray(served({"tokens": tokens, "positions": np.tile(np.arange(77), (3, 1))}))
    assert context.shape == full.shape
    np.testing.assert_allclose(context, full, rtol=0, atol=1e-5)
    assert np.abs(full[1] - full[2]).max() > 1e-3  # the prompts do differ


def test_a_caption_longer_than_the_positions_read_is_refused() -> None:
    end = 49407
    tokens = np.array([[49406, 1, 2, end, end], [49406, 1, 2, 3, 4]], np.int32)
    np.testing.assert_array_equal(train_tiny.leading_tokens(tokens[:1], end, 4), tokens[:1, :4])
    with pytest.raises(ValueError, match="TEXT_POSITIONS_READ"):
        train_tiny.leading_tokens(tokens, end, 4)
