"""The `sdserve` command line: parsing, the processes `up` starts, and `generate`.

`generate` is tested against a stand-in gateway (a real http.server process on a free
port answering with canned OpenAI-shaped bodies and real PNGs): this is a client test,
the real gateway is tested elsewhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from central.cli import (
    UpConfig,
    build_parser,
    build_processes,
    check_ports,
    main,
    output_paths,
    ready_banner,
    resolve_up_config,
)

REPO = Path(__file__).resolve().parents[3]
PY = "/usr/bin/python-test"
URL_VARS = ("SDSERVE_TEXT_ENCODER_URL", "SDSERVE_DIFFUSION_URL", "SDSERVE_DECODER_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def up_config(*argv: str, env: dict[str, str] | None = None) -> UpConfig:
    return resolve_up_config(build_parser().parse_args(["up", *argv]), env or {})


# --------------------------------------------------------------------------- parsing


def test_help_names_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sdserve" in out and "up" in out and "generate" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sdserve" in capsys.readouterr().err


def test_up_defaults_are_tiny_random_three_endpoints() -> None:
    assert up_config() == UpConfig(
        topology="three-endpoints",
        model="tiny",
        weights="random",
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


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--topology", "mesh"],
        ["up", "--model", "sd-v9"],
        ["up", "--sizes", "64"],
        ["up", "--port", "70000"],
        ["up", "--ready-timeout", "-1"],
        ["generate"],
        ["generate", "x", "-n", "0"],
        ["generate", "x", "--size", "big"],
        ["generate", "x", "--steps", "many"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_generate_arguments() -> None:
    args = build_parser().parse_args(
        ["generate", "a cat", "-o", "c.png", "--size", "128x128", "-n", "2", "--seed", "5"]
    )
    assert (args.prompt, args.output, args.size, args.n, args.seed) == (
        "a cat",
        "c.png",
        "128x128",
        2,
        5,
    )
    assert args.steps is None and args.guidance is None and args.url is None


# ------------------------------------------------------------- processes of `up`


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
        assert spec.env["SDSERVE_WEIGHTS"] == "random"
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
    banner = ready_banner(up_config("--port", "9000", "--sizes", "128x128,64x64"))
    assert "gateway: http://127.0.0.1:9000" in banner
    assert "docs:    http://127.0.0.1:9000/docs" in banner
    assert "curl -s http://127.0.0.1:9000/v1/images/generations" in banner
    body = json.loads(banner.split("-d '", 1)[1].split("'", 1)[0])
    assert body == {
        "prompt": "a lighthouse on a cliff at dusk, oil painting",
        "size": "128x128",
        "response_format": "b64_json",
    }
    assert "WEIGHTS ARE RANDOM" in banner
    assert "WEIGHTS ARE RANDOM" not in ready_banner(up_config("--weights", "pretrained"))
    assert 'size": "64x64"' in ready_banner(up_config())  # the tiny family's default


def test_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys, central.cli; "
        "print([m for m in ('tensorflow', 'keras', 'numpy', 'pydantic', 'httpx') "
        "if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------- generate

STAND_IN = """
import base64, http.server, io, json, sys, time
from PIL import Image
port, record = int(sys.argv[1]), sys.argv[2]

def png(width, height, shade):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 0, 255 - shade)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(record, "w") as f:
            json.dump({"path": self.path, "body": body}, f)
        prompt = body["prompt"]
        if prompt == "unsupported size":
            status, content = 422, json.dumps({"error": {
                "type": "unsupported_size",
                "message": "size 65x65 is not served here; served sizes: 64x64, 128x128",
                "param": "size"}})
        elif prompt == "crash":
            status, content = 500, "<html>Internal Server Error: boom</html>"
        elif prompt == "garbage":
            status, content = 200, json.dumps({"created": 1, "data": [{"b64_json": "@@@"}]})
        else:
            width, height = map(int, body["size"].split("x"))
            seed = body.get("seed", 1000)
            data = [{"b64_json": png(width, height, 40 * i), "seed": seed + i}
                    for i in range(body["n"])]
            status, content = 200, json.dumps({"created": int(time.time()), "data": data})
        payload = content.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class StandIn:
    def __init__(self, url: str, record: Path) -> None:
        self.url = url
        self.record = record

    def last_request(self) -> dict[str, object]:
        recorded = json.loads(self.record.read_text())
        assert recorded["path"] == "/v1/images/generations"
        body: dict[str, object] = recorded["body"]
        return body


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    port = free_port()
    record = tmp_path_factory.mktemp("stand-in") / "request.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STAND_IN), str(port), str(record)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "stand-in gateway did not start"
                time.sleep(0.05)
        yield StandIn(f"http://127.0.0.1:{port}", record)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_png(path: Path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def test_generate_saves_one_image_and_prints_its_seed(
    gateway: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(out), "--url", gateway.url + "/", "--size", "128x128"]
    argv += ["--seed", "42", "--steps", "3", "--guidance", "7.5", "--negative-prompt", "blurry"]
    assert main(argv) == 0
    assert open_png(out).size == (128, 128)
    assert capsys.readouterr().out == f"{out} (seed 42)\n"
    assert gateway.last_request() == {
        "prompt": "a cat",
        "n": 1,
        "size": "128x128",
        "response_format": "b64_json",
        "steps": 3,
        "guidance_scale": 7.5,
        "seed": 42,
        "negative_prompt": "blurry",
    }


def test_generate_leaves_unset_fields_to_the_server(
    gateway: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDSERVE_URL", gateway.url)  # used when --url is not given
    assert main(["generate", "a dog"]) == 0
    assert open_png(tmp_path / "out.png").size == (64, 64)
    assert gateway.last_request() == {
        "prompt": "a dog",
        "n": 1,
        "size": "64x64",
        "response_format": "b64_json",
    }


def test_generate_numbers_several_images(
    gateway: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "out.png"
    assert main(["generate", "birds", "-n", "3", "-o", str(out), "--url", gateway.url]) == 0
    paths = [tmp_path / "sub" / f"out-{i}.png" for i in range(3)]
    assert all(open_png(path).size == (64, 64) for path in paths)
    assert not out.exists()
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{path} (seed {1000 + i})" for i, path in enumerate(paths)]
    colours = {open_png(path).convert("RGB").getpixel((0, 0)) for path in paths}
    assert len(colours) == 3  # three different images, not one written thrice


def test_generate_converts_when_the_name_asks_for_another_format(
    gateway: StandIn, tmp_path: Path
) -> None:
    out = tmp_path / "cat.jpg"
    assert main(["generate", "a cat", "-o", str(out), "--url", gateway.url]) == 0
    with Image.open(out) as image:
        assert image.format == "JPEG"


def test_generate_prints_the_error_message_of_an_error_response(
    gateway: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "unsupported size", "-o", str(out), "--url", gateway.url]) == 1
    err = capsys.readouterr().err
    assert (
        "error: size 65x65 is not served here; served sizes: 64x64, 128x128 "
        "(unsupported_size, param: size, HTTP 422)"
    ) in err
    assert not out.exists()


def test_generate_reports_a_non_json_error_and_a_garbled_answer(
    gateway: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "crash", "-o", str(out), "--url", gateway.url]) == 1
    assert "error: HTTP 500: <html>Internal Server Error: boom</html>" in capsys.readouterr().err
    assert main(["generate", "garbage", "-o", str(out), "--url", gateway.url]) == 1
    assert f"error: unexpected response from {gateway.url}" in capsys.readouterr().err
    assert not out.exists()


def test_generate_says_when_no_gateway_is_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["generate", "a cat", "-o", str(tmp_path / "x.png"), "--url", url]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach an sdserve gateway at {url}" in err
    assert "Start one with `sdserve up`" in err


def test_the_console_command_exits_non_zero_on_errors(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "central.cli", "generate", "x", "--url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1
    assert "sdserve up" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_output_paths() -> None:
    assert output_paths(Path("a/b.png"), 1, numbered=False) == [Path("a/b.png")]
    assert output_paths(Path("b.png"), 2, numbered=True) == [Path("b-0.png"), Path("b-1.png")]
    assert output_paths(Path("pic"), 2, numbered=True) == [Path("pic-0.png"), Path("pic-1.png")]
