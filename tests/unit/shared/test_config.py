import pytest

from shared.config import ConfigError, Settings, load_settings, parse_size


def test_defaults_are_the_embedded_tiny_model(monkeypatch, tmp_path):
    for name in ("SDSERVE_MODEL", "SDSERVE_WEIGHTS", "SDSERVE_SIZES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.model == "tiny"
    assert settings.weights == "embedded"
    assert settings.sizes == [(64, 64), (128, 128)]
    assert load_settings(weights="random").weights_label.endswith("not trained)")
    assert load_settings(weights=str(tmp_path)).weights_label == f"directory {tmp_path.name}"


def test_default_weights_follow_the_model(monkeypatch):
    monkeypatch.delenv("SDSERVE_WEIGHTS", raising=False)
    assert load_settings(model="sd-v1").weights == "pretrained"
    with pytest.raises(ConfigError, match=r"SDSERVE_WEIGHTS.*only the tiny family"):
        load_settings(model="sd-v2", weights="embedded")


def test_sizes_parse_from_the_environment(monkeypatch):
    monkeypatch.setenv("SDSERVE_MODEL", "sd-v1")
    monkeypatch.setenv("SDSERVE_SIZES", "128x128, 256X128")
    assert load_settings().sizes == [(128, 128), (256, 128)]


def test_family_default_sizes(monkeypatch):
    monkeypatch.delenv("SDSERVE_SIZES", raising=False)
    assert load_settings(model="sd-v2").sizes == [(512, 512)]


def test_default_guidance_follows_the_family_unless_set(monkeypatch):
    monkeypatch.delenv("SDSERVE_DEFAULT_GUIDANCE_SCALE", raising=False)
    assert load_settings(model="tiny").guidance_scale == 5.0
    assert load_settings(model="sd-v1", weights="random").guidance_scale == 7.5
    monkeypatch.setenv("SDSERVE_DEFAULT_GUIDANCE_SCALE", "0")  # unconditional is allowed
    assert load_settings(model="sd-v1", weights="random").guidance_scale == 0.0


def test_default_sampler_is_the_familys_unless_set(monkeypatch):
    monkeypatch.delenv("SDSERVE_DEFAULT_SAMPLER", raising=False)
    assert load_settings(model="tiny").sampler == "ddim"
    monkeypatch.setenv("SDSERVE_DEFAULT_SAMPLER", "DPM++ 2M Karras")  # any accepted name
    assert load_settings(model="tiny").sampler == "dpmpp_2m_karras"
    monkeypatch.setenv("SDSERVE_DEFAULT_SAMPLER", "")
    assert load_settings(model="tiny").sampler == "ddim"


def test_default_steps_are_the_familys_unless_set(monkeypatch):
    """tiny's 8 DDIM steps are as good as 25 on its held-out prompts (samplers.md)."""
    monkeypatch.delenv("SDSERVE_DEFAULT_STEPS", raising=False)
    assert load_settings(model="tiny").steps == 8
    assert load_settings(model="sd-v1", weights="random").steps == 25
    monkeypatch.setenv("SDSERVE_DEFAULT_STEPS", "30")
    assert load_settings(model="tiny").steps == 30
    monkeypatch.setenv("SDSERVE_DEFAULT_STEPS", "")
    assert load_settings(model="tiny").steps == 8


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("SDSERVE_SIZES", "100x100", "SDSERVE_SIZES"),
        ("SDSERVE_SIZES", "big", "SDSERVE_SIZES"),
        ("SDSERVE_MODEL", "sd-xl", "SDSERVE_MODEL"),
        ("SDSERVE_WEIGHTS", "/no/such/dir", "SDSERVE_WEIGHTS"),
        ("SDSERVE_MAX_STEPS", "0", "SDSERVE_MAX_STEPS"),
        ("SDSERVE_QUEUE_SIZE", "many", "SDSERVE_QUEUE_SIZE"),
        ("SDSERVE_XLA", "maybe", "SDSERVE_XLA"),
        ("SDSERVE_DEFAULT_GUIDANCE_SCALE", "51", "SDSERVE_DEFAULT_GUIDANCE_SCALE"),
        ("SDSERVE_DEFAULT_SAMPLER", "k_lms", "SDSERVE_DEFAULT_SAMPLER"),
        ("SDSERVE_DEFAULT_STEPS", "0", "SDSERVE_DEFAULT_STEPS"),
        ("SDSERVE_DEFAULT_STEPS", "101", "SDSERVE_DEFAULT_STEPS"),  # over SDSERVE_MAX_STEPS
        ("SDSERVE_DIFFUSION_WEIGHTS", "/no/unet.h5", "SDSERVE_DIFFUSION_WEIGHTS"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)


def test_sd_sizes_must_be_multiples_of_128(monkeypatch):
    monkeypatch.setenv("SDSERVE_MODEL", "sd-v1")
    monkeypatch.setenv("SDSERVE_SIZES", "192x192")
    with pytest.raises(ConfigError, match=r"SDSERVE_SIZES.*multiple of 128"):
        load_settings()


def test_production_refuses_unsafe_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("SDSERVE_ENVIRONMENT", "production")
    monkeypatch.setenv("SDSERVE_WEIGHTS", "random")
    with pytest.raises(ConfigError, match="SDSERVE_WEIGHTS"):
        load_settings()
    monkeypatch.setenv("SDSERVE_WEIGHTS", str(tmp_path))
    with pytest.raises(ConfigError, match="SDSERVE_INTERNAL_TOKEN"):
        load_settings()
    monkeypatch.setenv("SDSERVE_INTERNAL_TOKEN", "s3cret")
    settings = load_settings()
    assert settings.internal_token is not None
    assert "s3cret" not in repr(settings)


def test_a_production_gateway_needs_api_keys_unless_anonymous_is_meant(monkeypatch, tmp_path):
    monkeypatch.setenv("SDSERVE_ENVIRONMENT", "production")
    monkeypatch.setenv("SDSERVE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("SDSERVE_INTERNAL_TOKEN", "s3cret")
    settings = load_settings()  # a stage needs no API keys
    with pytest.raises(ConfigError, match=r"SDSERVE_API_KEYS.*SDSERVE_ALLOW_ANONYMOUS"):
        settings.check_gateway()
    load_settings(allow_anonymous=True).check_gateway()
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated monthly\nkey-one\nkey-two, key-three  # old\n\n")
    with_file = load_settings(api_keys="key-zero", api_keys_file=keys_file)
    with_file.check_gateway()
    assert with_file.api_key_list() == ["key-zero", "key-one", "key-two", "key-three"]
    missing = load_settings(api_keys_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match="SDSERVE_API_KEYS_FILE"):
        missing.check_gateway()


def test_weights_file_must_be_a_safe_format(tmp_path):
    pickle_file = tmp_path / "unet.ckpt"
    pickle_file.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="SDSERVE_DIFFUSION_WEIGHTS"):
        load_settings(diffusion_weights=pickle_file)
    ok = tmp_path / "unet.safetensors"
    ok.write_bytes(b"{}")
    assert load_settings(diffusion_weights=ok).component_weights_file("diffusion_model") == ok


def test_parse_size():
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(ValueError):
        parse_size("512")
    assert isinstance(Settings().sizes, list)


def test_lora_setting(monkeypatch, tmp_path):
    style = tmp_path / "style.safetensors"
    style.write_bytes(b"")
    monkeypatch.setenv("SDSERVE_LORA", f"{style}:0.8")
    settings = load_settings(model="sd-v1", weights="random")
    assert [(spec.path, spec.scale) for spec in settings.lora] == [(style, 0.8)]
    assert settings.weights_label.endswith("+ LoRA style.safetensors (scale 0.8)")
    assert str(tmp_path) not in settings.weights_label
    with pytest.raises(ConfigError, match="SDSERVE_LORA: LoRA merges into sd-v1 and sd-v2"):
        load_settings(model="tiny")
    monkeypatch.setenv("SDSERVE_LORA", str(tmp_path / "style.ckpt"))
    with pytest.raises(ConfigError, match=r"SDSERVE_LORA: .*pickle"):
        load_settings(model="sd-v1", weights="random")
