"""Request ids across the chain, JSON logs, and graceful shutdown, on real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from shared.service_process import ServiceProcess, run_services
from tests.utils.wire import npz

TINY = {"SDSERVE_MODEL": "tiny", "SDSERVE_SIZES": "64x64", "SDSERVE_WARM_UP": "false"}


# Console span export: every process prints its spans to its log, where the test reads them.
TRACED = {**TINY, "OTEL_TRACES_EXPORTER": "console"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("operability")
    stages = {
        name: ServiceProcess(f"services.{name}", TRACED, log_path=logs / f"{name}.log")
        for name in ("text_encoder", "diffusion", "decoder")
    }
    with run_services(*stages.values()):
        urls = {f"SDSERVE_{name.upper()}_URL": svc.url for name, svc in stages.items()}
        central = ServiceProcess("central", {**TRACED, **urls}, log_path=logs / "central.log")
        with central:
            yield central, stages


def _json_lines(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def test_request_id_is_returned_and_reaches_every_stage_log(stack):
    central, stages = stack
    response = httpx.post(
        f"{central.url}/v1/images/generations",
        json={"prompt": "trace me", "steps": 2},
        headers={"X-Request-ID": "req-42-abc"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42-abc"
    time.sleep(0.5)  # let the log lines reach the files
    for name, service in {"central": central, **stages}.items():
        events = [e for e in _json_lines(service.log_text()) if e.get("request_id")]
        assert any(e["request_id"] == "req-42-abc" for e in events), name
        assert all({"ts", "level", "service", "message"} <= set(e) for e in events)


def _spans(text: str) -> list[dict]:
    """The spans ConsoleSpanExporter printed (one pretty-printed JSON object each)."""
    spans, buffer = [], []
    for line in text.splitlines():
        if line.startswith('{"ts"'):
            continue  # a JSON log line (stderr) interleaved with a span (stdout)
        if line == "{":
            buffer = [line]
        elif buffer:
            buffer.append(line)
            if line == "}":
                with contextlib.suppress(ValueError):
                    spans.append(json.loads("\n".join(buffer)))
                buffer = []
    return spans


def _check_trace(stack, stage_names):
    central, stages = stack
    response = httpx.post(
        f"{central.url}/v1/images/generations", json={"prompt": "traced", "steps": 2}, timeout=60
    )
    assert response.status_code == 200
    time.sleep(1.0)
    central_spans = _spans(central.log_text())
    request_span = next(
        s for s in reversed(central_spans) if s["name"] == "POST /v1/images/generations"
    )
    trace_id = request_span["context"]["trace_id"]
    names = {s["name"] for s in central_spans if s["context"]["trace_id"] == trace_id}
    assert {"stage text_encoder", "stage diffusion", "stage decoder"} <= names
    for name in stage_names:
        spans = _spans(stages[name].log_text())
        in_trace = [s for s in spans if s["context"]["trace_id"] == trace_id]
        assert in_trace, f"{name} has no span in the request's trace"
        # The batched model call is its own trace, linked to the request's span.
        linked = [
            s for s in spans if any(link["context"]["trace_id"] == trace_id for link in s["links"])
        ]
        assert linked, f"{name} has no model-call span linked to the request"


def test_one_trace_spans_central_and_the_stages(stack):
    _check_trace(stack, ["text_encoder", "decoder"])


def test_the_diffusion_stage_joins_every_requests_trace(stack):
    # Twice: the second request reuses central's keep-alive connection to the stage,
    # whose previous request left a receive() waiting (see FreshTraceContext).
    for _ in range(2):
        _check_trace(stack, ["diffusion"])


def test_a_made_up_id_when_none_or_unsafe_is_sent(stack):
    central, _ = stack
    made = httpx.get(f"{central.url}/v1/info").headers["x-request-id"]
    assert len(made) == 16
    unsafe = httpx.get(f"{central.url}/v1/info", headers={"X-Request-ID": "bad id <script>"})
    assert unsafe.headers["x-request-id"] != "bad id <script>"


def test_sigterm_refuses_new_work_and_finishes_what_is_in_flight(tmp_path):
    service = ServiceProcess(
        "services.diffusion",
        {**TINY, "SDSERVE_MAX_STEPS": "1000", "SDSERVE_SHUTDOWN_GRACE_S": "60"},
        log_path=tmp_path / "diffusion.log",
    )
    context = np.zeros((1, 77, 128), np.float32)
    body = npz({"context": context, "unconditional_context": context})
    headers = {"content-type": "application/x-npz"}
    with service:
        results: dict[str, httpx.Response] = {}

        def long_request():
            results["long"] = httpx.post(
                f"{service.url}/v1/denoise",
                params={"width": 64, "height": 64, "steps": 300, "seed": 1},
                content=body,
                headers=headers,
                timeout=120,
            )

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(1.0)
        os.kill(service.proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        try:
            refused = httpx.post(
                f"{service.url}/v1/denoise",
                params={"width": 64, "height": 64, "steps": 2},
                content=body,
                headers=headers,
                timeout=10,
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "shutting_down"
        except httpx.ConnectError:
            pass  # the listening socket is already closed: also a refusal
        thread.join(timeout=120)
        assert results["long"].status_code == 200, results["long"].text
        # uvicorn re-raises the signal once it has drained: a clean SIGTERM exit.
        assert service.proc.wait(timeout=30) in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory):
    logs = tmp_path_factory.mktemp("keys")
    gateway = ServiceProcess(
        "central",
        {
            **TINY,
            "SDSERVE_API_KEYS": "key-one,key-two",
            "SDSERVE_MAX_CONCURRENT_PER_KEY": "1",
            "SDSERVE_MAX_STEPS": "1000",
        },
        log_path=logs / "central.log",
    )
    with gateway:
        yield gateway


def test_api_keys_401_403_and_open_health(keyed_gateway):
    url = keyed_gateway.url
    body = {"prompt": "k", "steps": 2}
    assert httpx.post(f"{url}/v1/images/generations", json=body).status_code == 401
    wrong = httpx.post(
        f"{url}/v1/images/generations", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    right = httpx.post(
        f"{url}/v1/images/generations",
        json=body,
        headers={"Authorization": "Bearer key-two"},
        timeout=60,
    )
    assert right.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/info"):
        assert httpx.get(f"{url}{path}").status_code == 200, path


def test_per_key_concurrency_limit_is_429(keyed_gateway):
    url = keyed_gateway.url
    slow = {"prompt": "slow", "steps": 400, "size": "64x64"}
    results: dict[str, httpx.Response] = {}

    def first():
        results["first"] = httpx.post(
            f"{url}/v1/images/generations",
            json=slow,
            headers={"Authorization": "Bearer key-one"},
            timeout=120,
        )

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(1.0)
    second = httpx.post(
        f"{url}/v1/images/generations", json=slow, headers={"Authorization": "Bearer key-one"}
    )
    other_key = httpx.post(
        f"{url}/v1/images/generations",
        json={"prompt": "x", "steps": 2},
        headers={"Authorization": "Bearer key-two"},
        timeout=120,
    )
    thread.join(timeout=120)
    assert second.status_code == 429 and second.headers["retry-after"]
    assert other_key.status_code == 200
    assert results["first"].status_code == 200


def test_a_job_holds_the_keys_slot_and_following_it_takes_none(keyed_gateway):
    url = keyed_gateway.url
    key = {"Authorization": "Bearer key-one"}  # at most 1 request or job in flight
    job = httpx.post(f"{url}/v1/jobs", json={"prompt": "j", "steps": 300}, headers=key).json()
    assert httpx.get(f"{url}{job['events_url']}").status_code == 401
    quick = {"prompt": "q", "steps": 2}
    with httpx.stream("GET", f"{url}{job['events_url']}", headers=key, timeout=60) as events:
        assert events.status_code == 200
        # The unfinished job holds the key's one slot...
        busy = httpx.post(f"{url}/v1/images/generations", json=quick, headers=key, timeout=60)
        assert busy.status_code == 429, busy.text
        httpx.delete(f"{url}{job['url']}", headers=key, timeout=30)
        # ...and once it has ended, the open event stream leaves the slot free for work.
        done = httpx.post(f"{url}/v1/images/generations", json=quick, headers=key, timeout=60)
        assert done.status_code == 200, done.text


def test_an_a1111_client_logs_in_with_the_key_as_its_password(keyed_gateway):
    webuiapi = pytest.importorskip("webuiapi")
    base = f"{keyed_gateway.url}/sdapi/v1"
    # `--api-auth user:pass` in A1111; here any user, and an API key as the password.
    api = webuiapi.WebUIApi(baseurl=base, username="painter", password="key-one")
    assert api.util_get_current_model() == "tiny"
    result = api.txt2img(prompt="k", width=64, height=64, steps=2, seed=1)
    assert len(result.images) == 1 and result.info["all_seeds"] == [1]
    stranger = webuiapi.WebUIApi(baseurl=base, username="painter", password="nope")
    refused = stranger.session.get(f"{base}/options")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    with pytest.raises(RuntimeError):  # webuiapi's own report of a refusal
        stranger.txt2img(prompt="k", width=64, height=64, steps=2)


GARBAGE_STAGE = """
import http.server, os, sys

class Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # /readyz and /v1/info: looks healthy
        self._send(200, b'{"status": "ready"}', "application/json")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(200, os.urandom(4096), "application/x-npz")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Garbage).serve_forever()
"""


def test_a_stage_answering_garbage_is_a_502_naming_it(tmp_path):
    """A fault injected on purpose: a 'diffusion stage' that answers random bytes."""
    import subprocess
    import sys

    from shared.service_process import free_port

    port = free_port()
    garbage = subprocess.Popen([sys.executable, "-c", GARBAGE_STAGE, str(port)])
    try:
        gateway = ServiceProcess(
            "central",
            {**TINY, "SDSERVE_DIFFUSION_URL": f"http://127.0.0.1:{port}"},
            log_path=tmp_path / "central.log",
        )
        with gateway:
            response = httpx.post(
                f"{gateway.url}/v1/images/generations", json={"prompt": "x"}, timeout=60
            )
    finally:
        garbage.terminate()
        garbage.wait(timeout=10)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["type"] == "upstream_bad_response"
    assert "diffusion" in error["message"]
