"""`sdserve up`: its settings, the processes it starts for each topology, the ports it
checks first, and the banner it prints once ready.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest

from central.cli import main
from central.cli.parser import build_parser
from central.cli.up import (
    UpConfig,
    build_processes,
    check_ports,
    gateway_models,
    ready_banner,
    resolve_up_config,
)
from shared.pipeline.models_file import ModelEntry, read_models_file, render_models_file

PY = "/usr/bin/python-test"
URL_VARS = ("SDSERVE_TEXT_ENCODER_URL", "SDSERVE_DIFFUSION_URL", "SDSERVE_DECODER_URL")


def up_config(*argv: str, env: dict[str, str] | None = None) -> UpConfig:
    return resolve_up_config(build_parser().parse_args(["up", *argv]), env or {})


def test_up_defaults_are_tiny_embedded_three_endpoints() -> None:
    assert up_config() == UpConfig(
        topology="three-endpoints",
        model="tiny",
        weights="embedded",
        sizes=None,
        host="127.0.0.1",
        port=8000,
        base_port=8001,
    )


def test_up_flags_override_the_environment() -> None:
    env = {"SDSERVE_MODEL": "sd-v1", "SDSERVE_WEIGHTS": "pretrained", "SDSERVE_SIZES": "512x512"}
    from_env = up_config(env=env)
    assert (from_env.model, from_env.weights, from_env.sizes) == ("sd-v1", "pretrained", "512x512")
    flags = up_config(
        "--model", "sd-v2", "--weights", "random", "--sizes", "256X256, 512x512", env=env
    )
    assert (flags.model, flags.weights, flags.sizes) == ("sd-v2", "random", "256x256,512x512")


def test_up_weights_default_follows_the_model() -> None:
    assert up_config("--model", "sd-v1").weights == "pretrained"
    assert up_config(env={"SDSERVE_MODEL": "tiny"}).weights == "embedded"


def test_up_weights_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert up_config("--weights", "weights").weights == str(tmp_path / "weights")


def test_up_all_options() -> None:
    config = up_config(
        "--topology", "hybrid", "--host", "0.0.0.0", "--port", "9000", "--base-port", "9100"
    )
    assert (config.topology, config.host, config.port, config.base_port) == (
        "hybrid",
        "0.0.0.0",
        9000,
        9100,
    )


def test_three_endpoints_starts_every_stage_and_central_with_their_urls() -> None:
    base_env = {"PATH": "/bin", "SDSERVE_XLA": "off", "SDSERVE_DIFFUSION_URL": "http://stale"}
    specs = build_processes(up_config("--sizes", "64x64"), base_env, python=PY)
    assert [s.name for s in specs] == ["text-encoder", "diffusion", "decoder", "central"]
    modules = ["services.text_encoder", "services.diffusion", "services.decoder", "central"]
    ports = ["8001", "8002", "8003", "8000"]
    for spec, module, port in zip(specs, modules, ports, strict=True):
        assert list(spec.argv) == [PY, "-m", module, "--host", "127.0.0.1", "--port", port]
        assert spec.ready_url == f"http://127.0.0.1:{port}/readyz"
        assert spec.env is not None
        assert spec.env["SDSERVE_MODEL"] == "tiny"
        assert spec.env["SDSERVE_WEIGHTS"] == "embedded"
        assert spec.env["SDSERVE_SIZES"] == "64x64"
        assert spec.env["SDSERVE_XLA"] == "off"  # other settings pass through
        assert spec.env["PATH"] == "/bin"
    for stage in specs[:3]:
        assert stage.env is not None
        assert not any(var in stage.env for var in URL_VARS)
    central_env = specs[3].env
    assert central_env is not None
    assert central_env["SDSERVE_TEXT_ENCODER_URL"] == "http://127.0.0.1:8001"
    assert central_env["SDSERVE_DIFFUSION_URL"] == "http://127.0.0.1:8002"
    assert central_env["SDSERVE_DECODER_URL"] == "http://127.0.0.1:8003"


def test_all_in_one_is_central_alone_without_stage_urls() -> None:
    base_env = {var: "http://stale" for var in URL_VARS} | {"SDSERVE_SIZES": "512x512"}
    specs = build_processes(up_config("--topology", "all-in-one"), base_env, python=PY)
    assert [s.name for s in specs] == ["central"]
    assert specs[0].env is not None
    assert not any(var in specs[0].env for var in URL_VARS)
    assert "SDSERVE_SIZES" not in specs[0].env  # config.sizes None: the family's default


def test_hybrid_runs_only_diffusion_remote() -> None:
    config = up_config("--topology", "hybrid", "--base-port", "9001", "--port", "9000")
    specs = build_processes(config, {}, python=PY)
    assert [s.name for s in specs] == ["diffusion", "central"]
    assert list(specs[0].argv)[-1] == "9002"  # diffusion keeps its slot: base + 1
    central_env = specs[1].env
    assert central_env is not None
    assert central_env["SDSERVE_DIFFUSION_URL"] == "http://127.0.0.1:9002"
    assert "SDSERVE_TEXT_ENCODER_URL" not in central_env
    assert "SDSERVE_DECODER_URL" not in central_env


def test_replicas_each_get_a_port_and_central_gets_them_all() -> None:
    config = up_config("--replicas", "diffusion=3,decoder=2")
    specs = build_processes(config, {}, python=PY)
    names = [s.name for s in specs]
    assert names == [
        "text-encoder",
        "diffusion",
        "diffusion-2",
        "diffusion-3",
        "decoder",
        "decoder-2",
        "central",
    ]
    ports = [list(s.argv)[-1] for s in specs[:-1]]
    assert ports == ["8001", "8002", "8012", "8022", "8003", "8013"]
    central_env = specs[-1].env
    assert central_env is not None
    assert central_env["SDSERVE_DIFFUSION_URL"] == (
        "http://127.0.0.1:8002,http://127.0.0.1:8012,http://127.0.0.1:8022"
    )
    assert central_env["SDSERVE_DECODER_URL"] == "http://127.0.0.1:8003,http://127.0.0.1:8013"
    assert central_env["SDSERVE_TEXT_ENCODER_URL"] == "http://127.0.0.1:8001"
    assert not any("would both use" in problem for problem in check_ports(specs))


def test_a_models_file_gives_each_model_a_diffusion_service_and_the_gateway_their_urls(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[model]]\nname = "tiny"\nfamily = "tiny"\nweights = "embedded"\n\n'
        '[[model]]\nname = "alt"\nfamily = "tiny"\nweights = "random"\n'
    )
    config = up_config("--models-file", str(models), "--replicas", "diffusion=2")
    assert (config.model, config.weights) == ("tiny", "embedded")
    config = dataclasses.replace(config, models_file_out="/tmp/gateway-models.toml")
    specs = build_processes(config, {}, python=PY)
    names = [s.name for s in specs]
    assert names == [
        "text-encoder",
        "diffusion",
        "diffusion-2",
        "diffusion-alt",
        "diffusion-alt-2",
        "decoder",
        "central",
    ]
    by_name = {s.name: s for s in specs}
    assert by_name["diffusion-alt"].env is not None
    assert by_name["diffusion-alt"].env["SDSERVE_WEIGHTS"] == "random"
    assert list(by_name["diffusion-alt-2"].argv)[-1] == "8112"
    central_env = by_name["central"].env
    assert central_env is not None
    assert central_env["SDSERVE_MODELS_FILE"] == "/tmp/gateway-models.toml"
    handed = read_models_file_text(render_models_file(gateway_models(config)), tmp_path)
    assert [(m.name, m.diffusion_url) for m in handed] == [
        ("tiny", "http://127.0.0.1:8002,http://127.0.0.1:8012"),
        ("alt", "http://127.0.0.1:8102,http://127.0.0.1:8112"),
    ]


def read_models_file_text(text: str, directory: Path) -> list[ModelEntry]:
    path = directory / "handed.toml"
    path.write_text(text)
    return read_models_file(path)


def test_up_refuses_replicas_of_a_stage_that_runs_inside_the_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["up", "--topology", "hybrid", "--replicas", "decoder=2"]) == 2
    assert "decoder runs inside the gateway in the hybrid topology" in capsys.readouterr().err


def test_stages_stay_on_loopback_when_the_gateway_listens_everywhere() -> None:
    specs = build_processes(up_config("--host", "0.0.0.0"), {}, python=PY)
    central = specs[-1]
    assert list(central.argv)[3:5] == ["--host", "0.0.0.0"]
    assert central.ready_url == "http://127.0.0.1:8000/readyz"
    assert all(list(s.argv)[3:5] == ["--host", "127.0.0.1"] for s in specs[:-1])


def test_check_ports_reports_taken_and_clashing_ports() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = up_config("--topology", "all-in-one", "--port", str(port))
        assert check_ports(build_processes(config, {}, python=PY)) == [
            f"port {port} on 127.0.0.1 (for central) is already in use"
        ]
    clash = build_processes(up_config("--port", "8002"), {}, python=PY)
    assert "central and diffusion would both use port 8002" in check_ports(clash)


def test_up_refuses_a_taken_port_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["up", "--topology", "all-in-one", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 (for central) is already in use" in err


def test_up_refuses_bad_settings_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--weights", str(tmp_path / "missing")]) == 2
    assert "SDSERVE_WEIGHTS" in capsys.readouterr().err
    assert main(["up", "--sizes", "100x100"]) == 2
    assert "SDSERVE_SIZES" in capsys.readouterr().err


def test_ready_banner_has_urls_a_curl_example_and_the_random_warning() -> None:
    banner = ready_banner(
        up_config("--port", "9000", "--sizes", "128x128,64x64", "--weights", "random")
    )
    assert "gateway: http://127.0.0.1:9000" in banner
    assert "docs:    http://127.0.0.1:9000/docs" in banner
    assert "curl -s http://127.0.0.1:9000/v1/images/generations" in banner
    body = json.loads(banner.split("-d '", 1)[1].split("'", 1)[0])
    assert body == {
        "prompt": "a red square on a white background",  # what the tiny model can draw
        "size": "128x128",
        "response_format": "b64_json",
    }
    assert "WEIGHTS ARE RANDOM" in banner
    assert "WEIGHTS ARE RANDOM" not in ready_banner(up_config())
    sd = ready_banner(up_config("--model", "sd-v1"))
    assert "lighthouse" in sd and "WEIGHTS ARE RANDOM" not in sd
    assert 'size": "64x64"' in ready_banner(up_config())  # the tiny family's default
