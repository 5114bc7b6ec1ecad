"""`sdserve generate`: tested against the real tiny gateway in its own process (jobs, the
event stream, Ctrl-C cancelling the job), and against a small in-process stand-in for
the faults a real gateway does not produce on demand.
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

from central.cli import main
from central.cli.generate import output_paths
from central.cli.parser import build_parser
from shared.families import get_family
from shared.service_process import ServiceProcess

REPO = Path(__file__).resolve().parents[4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    assert args.sampler is None  # the server's default


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
    argv += ["--sampler", "DPM++ 2M Karras"]
    assert main(argv) == 0
    assert open_png(out).size == (128, 128)
    captured = capsys.readouterr()
    assert captured.out == f"{out} (seed 42)\n"
    assert "sdserve generate: job " in captured.err and "3/3" in captured.err  # the bar
    # Words tiny was not trained on are named on stderr, the prompt's and the negative's.
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 2, captured.err
    assert warnings[0].startswith("sdserve generate: warning: the tiny model does not know")
    assert "'cat'" in warnings[0] and "'blurry'" in warnings[1]
    # Every option reached the gateway: the plain route gives the same pixels for them.
    [expected] = generations(
        gateway,
        prompt="a cat",
        size="128x128",
        seed=42,
        steps=3,
        guidance_scale=6.5,
        negative_prompt="blurry",
        sampler="dpmpp_2m_karras",
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
    steps = get_family("tiny").spec.default_steps
    assert f"{steps}/{steps}" in captured.err  # the server's default steps


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
        events: list[tuple[str, dict[str, object]]] = [
            ("queued", {"step": 0, "total": 2}),
            ("progress", {"step": 1, "total": 2}),
        ]
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


def test_output_paths() -> None:
    assert output_paths(Path("a/b.png"), 1, numbered=False) == [Path("a/b.png")]
    assert output_paths(Path("b.png"), 2, numbered=True) == [Path("b-0.png"), Path("b-1.png")]
    assert output_paths(Path("pic"), 2, numbered=True) == [Path("pic-0.png"), Path("pic-1.png")]


def test_generate_refuses_to_overwrite_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing there: refused before any request
    out = tmp_path / "x.png"
    out.write_bytes(b"mine")
    assert main(["generate", "a cat", "-o", str(out), "--url", url]) == 1
    err = capsys.readouterr().err
    assert f"sdserve generate: error: {out} already exists; pass --force to overwrite" in err
    assert out.read_bytes() == b"mine"
    numbered = tmp_path / "y-1.png"
    numbered.write_bytes(b"mine")
    assert main(["generate", "a cat", "-n", "2", "-o", str(tmp_path / "y.png"), "--url", url]) == 1
    assert f"{numbered} already exists" in capsys.readouterr().err
    assert not (tmp_path / "y-0.png").exists() and numbered.read_bytes() == b"mine"


def test_generate_overwrites_with_force(
    stand_in: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    out.write_bytes(b"mine")
    assert main(["generate", "dropped", "-o", str(out), "--url", stand_in, "--force"]) == 0
    assert open_png(out).size == (8, 8)
    assert capsys.readouterr().out == f"{out} (seed 5)\n"
