"""Weight sources, exercised with files made here (real weights cannot be downloaded)."""

import socket

import h5py
import numpy as np
import pytest

from shared.errors import WeightsError
from shared.families import PublishedWeights, get_family
from shared.weights import (
    CHECKSUMS_FILE,
    fetch_published,
    load_component_weights,
    save_safetensors,
    sha256_of,
)


def _build(family, component, seed, size=(64, 64)):
    import keras

    keras.utils.set_random_seed(seed)
    return family.build(component, size[1], size[0])


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))


@pytest.fixture(scope="module")
def tiny():
    return get_family("tiny")


def _load(model, family, component, **kwargs):
    kwargs.setdefault("override", None)
    kwargs.setdefault("cache_dir", "/nonexistent-cache")
    return load_component_weights(model, family, component, **kwargs)


def test_random_source_keeps_the_seeded_init(tiny):
    model = _build(tiny, "decoder", 1)
    origin = _load(model, tiny, "decoder", source="random", seed=1)
    assert origin.source == "random" and "not trained" in origin.label
    assert _same_weights(model, _build(tiny, "decoder", 1))


def test_directory_with_checksums_loads_and_is_checked(tiny, tmp_path):
    trained = _build(tiny, "decoder", 1)
    trained.save_weights(tmp_path / "decoder.weights.h5")
    digest = sha256_of(tmp_path / "decoder.weights.h5")
    (tmp_path / CHECKSUMS_FILE).write_text(f"{digest}  decoder.weights.h5\n")

    fresh = _build(tiny, "decoder", 2)
    assert not _same_weights(fresh, trained)
    origin = _load(fresh, tiny, "decoder", source=str(tmp_path))
    assert origin.source == "directory" and origin.sha256 == digest
    assert _same_weights(fresh, trained)

    (tmp_path / CHECKSUMS_FILE).write_text(f"{'0' * 64}  decoder.weights.h5\n")
    with pytest.raises(WeightsError, match="sha256"):
        _load(_build(tiny, "decoder", 2), tiny, "decoder", source=str(tmp_path))


def test_directory_missing_file_names_it(tiny, tmp_path):
    with pytest.raises(WeightsError, match=r"text_encoder\.weights\.h5"):
        _load(_build(tiny, "text_encoder", 1), tiny, "text_encoder", source=str(tmp_path))


def test_single_file_override_wins_and_safetensors_round_trips(tiny, tmp_path):
    tuned = _build(tiny, "diffusion_model", 3)
    path = tmp_path / "unet.safetensors"
    save_safetensors(tuned, path)
    fresh = _build(tiny, "diffusion_model", 4)
    origin = _load(fresh, tiny, "diffusion_model", source="random", override=path)
    assert origin.source == "file" and origin.path == str(path)
    assert _same_weights(fresh, tuned)


def test_safetensors_for_another_model_is_refused(tiny, tmp_path):
    path = tmp_path / "decoder.safetensors"
    save_safetensors(_build(tiny, "decoder", 1), path)
    with pytest.raises(WeightsError, match="do not match"):
        _load(
            _build(tiny, "diffusion_model", 1),
            tiny,
            "diffusion_model",
            source="random",
            override=path,
        )


def test_h5_of_the_wrong_shape_is_a_weights_error(tiny, tmp_path):
    path = tmp_path / "bad.weights.h5"
    _build(tiny, "decoder", 1).save_weights(path)
    with pytest.raises(WeightsError, match="cannot load"):
        _load(
            _build(tiny, "image_encoder", 1), tiny, "image_encoder", source="random", override=path
        )


def test_pretrained_for_a_family_without_published_files(tiny):
    with pytest.raises(WeightsError, match="no published weights"):
        _load(_build(tiny, "decoder", 1), tiny, "decoder", source="pretrained")


def _refusing_url(name):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def test_pretrained_offline_fails_fast_naming_the_file(tmp_path):
    published = PublishedWeights("kcv_decoder.h5", _refusing_url("kcv_decoder.h5"), "0" * 64)
    with pytest.raises(WeightsError) as info:
        fetch_published(published, tmp_path)
    assert "kcv_decoder.h5" in str(info.value) and "SDSERVE_WEIGHTS" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def _save_legacy_h5(model, path):
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as handle:
        save_weights_to_hdf5_group(handle, model)


@pytest.mark.slow
def test_sd_v1_published_file_layout_from_directory_and_cache(tmp_path):
    """keras-cv's legacy .h5 layout, checked against the family's sha256 table."""
    family = get_family("sd-v1")
    reference = _build(family, "decoder", 5, size=(128, 128))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    _save_legacy_h5(reference, weights_dir / "kcv_decoder.h5")

    # The real table: a locally made file is not keras-cv's, and is refused as such.
    with pytest.raises(WeightsError, match="sha256"):
        _load(_build(family, "decoder", 6, (128, 128)), family, "decoder", source=str(weights_dir))

    # With the table pointing at this file, the same code path loads it.
    real = family.published_weights["decoder"]
    family.published_weights["decoder"] = PublishedWeights(
        real.filename, _refusing_url(real.filename), sha256_of(weights_dir / "kcv_decoder.h5")
    )
    fresh = _build(family, "decoder", 6, (128, 128))
    origin = _load(fresh, family, "decoder", source=str(weights_dir))
    assert origin.source == "directory"
    assert _same_weights(fresh, reference)

    # `pretrained` uses an already-cached file without touching the network.
    cached = _build(family, "decoder", 7, (128, 128))
    origin = _load(cached, family, "decoder", source="pretrained", cache_dir=weights_dir)
    assert origin.source == "pretrained"
    assert _same_weights(cached, reference)


def test_converted_files_listed_in_checksums_win_over_published_names(tmp_path):
    """What `sdserve convert` writes (<component>.safetensors + SHA256SUMS) is read for
    sd-v1 instead of keras-cv's file names and hashes."""
    from shared.weights import resolve_directory_file

    family = get_family("sd-v1")
    (tmp_path / "diffusion_model.safetensors").write_bytes(b"weights")
    digest = sha256_of(tmp_path / "diffusion_model.safetensors")
    (tmp_path / CHECKSUMS_FILE).write_text(f"{digest}  diffusion_model.safetensors\n")
    path, checked = resolve_directory_file(family, "diffusion_model", tmp_path)
    assert path.name == "diffusion_model.safetensors" and checked == digest
    # Not listed: keras-cv's published name is what is looked for.
    with pytest.raises(WeightsError, match=r"kcv_decoder\.h5 is missing.*sdserve convert"):
        resolve_directory_file(family, "decoder", tmp_path)
    (tmp_path / CHECKSUMS_FILE).write_text(f"{'0' * 64}  diffusion_model.safetensors\n")
    with pytest.raises(WeightsError, match="sha256"):
        resolve_directory_file(family, "diffusion_model", tmp_path)


def test_labels_name_files_never_their_paths():
    from shared.weights import WeightsOrigin

    origin = WeightsOrigin(
        "directory",
        "/srv/secret/sd15/diffusion_model.safetensors",
        "ab" * 32,
        prediction_type="v_prediction",
        loras=("style.safetensors (scale 0.8)",),
    )
    assert origin.label == (
        "directory:diffusion_model.safetensors (sha256 abababababab…), predicts "
        "v_prediction + LoRA style.safetensors (scale 0.8)"
    )
    assert "/srv" not in origin.label
