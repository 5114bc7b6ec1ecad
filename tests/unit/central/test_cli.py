"""The `sdserve` command line: parsing, the processes `up` starts, and `generate`.

`generate` is tested against the real tiny gateway in its own process (jobs, the event
stream, Ctrl-C cancelling the job), and against a small in-process stand-in for the
faults a real gateway does not produce on demand.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
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
from shared.service_process import ServiceProcess

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
#
# `generate` runs against the real gateway (the session's all-in-one tiny gateway, in its
# own process); a small in-process stand-in gives the answers a real gateway never does.


@pytest.fixture(scope="module")
def gateway(tiny_stack: dict[str, ServiceProcess]) -> ServiceProcess:
    return tiny_stack["all-in-one"]


def open_png(path: Path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def generations(gateway: ServiceProcess, **body: object) -> list[dict[str, object]]:
    """What POST /v1/images/generations answers for the same request."""
    response = httpx.post(f"{gateway.url}/v1/images/generations", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


def test_generate_saves_one_image_and_prints_its_seed(
    gateway: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(out), "--url", gateway.url + "/", "--size", "128x128"]
    argv += ["--seed", "42", "--steps", "3", "--guidance", "6.5", "--negative-prompt", "blurry"]
    assert main(argv) == 0
    assert open_png(out).size == (128, 128)
    captured = capsys.readouterr()
    assert captured.out == f"{out} (seed 42)\n"
    assert "sdserve generate: job " in captured.err and "3/3" in captured.err  # the bar
    # Every option reached the gateway: the plain route gives the same pixels for them.
    [expected] = generations(
        gateway,
        prompt="a cat",
        size="128x128",
        seed=42,
        steps=3,
        guidance_scale=6.5,
        negative_prompt="blurry",
    )
    assert out.read_bytes() == base64.b64decode(str(expected["b64_json"]))


def test_generate_leaves_unset_fields_to_the_server(
    gateway: ServiceProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDSERVE_URL", gateway.url)  # used when --url is not given
    assert main(["generate", "a dog"]) == 0
    assert open_png(tmp_path / "out.png").size == (64, 64)
    captured = capsys.readouterr()
    seed = int(captured.out.split("(seed ")[1].rstrip(")\n"))  # drawn by the server
    assert seed >= 0
    assert "25/25" in captured.err  # the server's default steps


def test_generate_numbers_several_images(
    gateway: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "out.png"
    argv = ["generate", "birds", "-n", "3", "-o", str(out), "--url", gateway.url]
    assert main([*argv, "--seed", "1000", "--steps", "2"]) == 0
    paths = [tmp_path / "sub" / f"out-{i}.png" for i in range(3)]
    assert all(open_png(path).size == (64, 64) for path in paths)
    assert not out.exists()
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{path} (seed {1000 + i})" for i, path in enumerate(paths)]
    assert len({path.read_bytes() for path in paths}) == 3  # three images, not one thrice


def test_generate_converts_when_the_name_asks_for_another_format(
    gateway: ServiceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "cat.jpg"
    assert main(["generate", "a cat", "-o", str(out), "--url", gateway.url, "--steps", "2"]) == 0
    with Image.open(out) as image:
        assert image.format == "JPEG"


def test_generate_prints_the_error_message_of_an_error_response(
    gateway: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    argv = ["generate", "a cat", "-o", str(out), "--url", gateway.url, "--size", "96x96"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        "error: size 96x96 is not served here; served sizes: 64x64, 128x128 "
        "(unsupported_size, param: size, HTTP 422)"
    ) in err
    assert not out.exists()


def test_ctrl_c_cancels_the_job_on_the_gateway(gateway: ServiceProcess, tmp_path: Path) -> None:
    out = tmp_path / "long.png"
    argv = ["generate", "a long one", "--url", gateway.url, "--size", "128x128"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "central.cli", *argv, "--steps", "1000", "-o", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT; this one must not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "submitted" in line, line
        job_id = line.split("job ", 1)[1].split()[0]
        job_url = f"{gateway.url}/v1/jobs/{job_id}"
        deadline = time.monotonic() + 60
        while httpx.get(job_url).json()["progress"]["step"] < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out_text, err_text = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err_text
    assert f"cancelled job {job_id}" in err_text
    assert out_text == "" and not out.exists()
    job = httpx.get(job_url).json()
    assert job["status"] == "cancelled" and job["progress"]["step"] < 1000


class StandIn(http.server.BaseHTTPRequestHandler):
    """A gateway that misbehaves on request: the job id names what goes wrong."""

    event_connections: ClassVar[dict[str, int]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        scenario = body["prompt"]
        if scenario == "crash":
            self.reply(500, "<html>Internal Server Error: boom</html>", "text/html")
            return
        job = {"id": scenario, "status": "queued", "url": f"/v1/jobs/{scenario}"}
        self.reply(202, json.dumps({**job, "events_url": f"{job['url']}/events"}))

    def do_GET(self) -> None:
        scenario = self.path.split("/")[3]
        seen = self.event_connections.get(scenario, 0)
        self.event_connections[scenario] = seen + 1
        if scenario == "gone":
            self.reply(404, json.dumps({"error": {"type": "not_found", "message": "no job"}}))
            return
        events = [("queued", {"step": 0, "total": 2}), ("progress", {"step": 1, "total": 2})]
        if scenario == "garbage":
            events.append(("done", {"result": {"data": [{"b64_json": "@@@", "seed": 1}]}}))
        elif scenario == "failed":
            error = {"type": "upstream_unavailable", "message": "decoder stage is unreachable"}
            events.append(("error", {"error": error}))
        elif scenario == "cancelled":
            events.append(("cancelled", {"step": 1, "total": 2}))
        elif scenario == "dropped" and seen > 0:  # the second connection sees the end
            png = io.BytesIO()
            Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
            item = {"b64_json": base64.b64encode(png.getvalue()).decode(), "seed": 5}
            events = [("done", {"total": 2, "result": {"data": [item]}})]
        text = ": ping\r\n\r\n" + "".join(
            f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n" for name, data in events
        )
        self.reply(200, text, "text/event-stream")

    def reply(self, status: int, text: str, media_type: str = "application/json") -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("crash", "error: HTTP 500: <html>Internal Server Error: boom</html>"),
        ("garbage", "error: unexpected response from {url}"),
        ("failed", "error: decoder stage is unreachable (upstream_unavailable)"),
        ("cancelled", "error: job cancelled was cancelled on the gateway"),
        ("gone", "error: job gone is gone from {url} (did the gateway restart?)"),
    ],
)
def test_generate_reports_what_went_wrong(
    stand_in: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    scenario: str,
    message: str,
) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", scenario, "-o", str(out), "--url", stand_in]) == 1
    assert message.format(url=stand_in) in capsys.readouterr().err
    assert not out.exists()


def test_generate_follows_a_dropped_event_stream_to_the_end(
    stand_in: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "dropped", "-o", str(out), "--url", stand_in]) == 0
    assert StandIn.event_connections["dropped"] == 2
    assert open_png(out).size == (8, 8)
    assert capsys.readouterr().out == f"{out} (seed 5)\n"


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
