"""The text encoder service as a real process (tiny family, embedded weights)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from shared.service_process import ServiceProcess
from tests.utils.wire import assert_error, read_npz

from .common import AUTH
from .stage_contract import StageContract

SERVICE_MODULE = "services.text_encoder"
ROUTE = "/v1/encode"
JSON_HEADERS = {"content-type": "application/json"}
MAX_TOKENS = 77
CONTEXT_DIM = 128
LONG_PROMPT = "cat " * 100  # start + 100 tokens + end: 102 tokens


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def encode(client: httpx.Client, svc: ServiceProcess, payload: Any, **query: Any) -> httpx.Response:
    return client.post(
        f"{svc.url}{ROUTE}", content=body_of(payload), headers=JSON_HEADERS, params=query
    )


def arrays_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    arrays = read_npz(response.content)
    assert set(arrays) == {"context", "unconditional_context", "token_count", "truncated"}
    return arrays


class TestTextEncoderContract(StageContract):
    module = SERVICE_MODULE
    route = ROUTE
    service_name = "text-encoder"
    component = "text_encoder"

    def good_request(self) -> dict[str, Any]:
        return {"content": body_of({"prompts": ["a cat"]}), "headers": dict(JSON_HEADERS)}

    def oversize_request(self) -> dict[str, Any]:
        # Over the restricted service's 200 kB cap (and each prompt under 4000 chars).
        payload = {"prompts": ["a" * 3000] * 80}
        return {"content": body_of(payload), "headers": dict(JSON_HEADERS)}

    def test_oversize_streamed_body_is_413(
        self, client: httpx.Client, restricted: ServiceProcess
    ) -> None:
        super().test_oversize_streamed_body_is_413(client, restricted)

    def test_oversize_streamed_body_is_refused(
        self, client: httpx.Client, restricted: ServiceProcess
    ) -> None:
        """Whatever the status, a streamed body over the cap is not encoded."""
        body = self.oversize_request()["content"]
        chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
        response = self.post(
            client, restricted, content=iter(chunks), headers={**JSON_HEADERS, **AUTH}
        )
        assert 400 <= response.status_code < 500
        assert_error(response, response.status_code)


# --- good calls -------------------------------------------------------------------------


def test_one_prompt(client: httpx.Client, service: ServiceProcess) -> None:
    response = encode(client, service, {"prompts": ["a photograph of a cat"]})
    arrays = arrays_of(response)
    for name in ("context", "unconditional_context"):
        assert arrays[name].shape == (1, MAX_TOKENS, CONTEXT_DIM)
        assert arrays[name].dtype == np.float32
        assert np.isfinite(arrays[name]).all()
    assert arrays["token_count"].dtype == np.int32
    assert arrays["token_count"].tolist() == [7]  # start, 5 words, end
    assert arrays["truncated"].dtype == np.bool_
    assert arrays["truncated"].tolist() == [False]
    assert response.headers["x-truncated"] == "0"


def test_batch_of_prompts(client: httpx.Client, service: ServiceProcess) -> None:
    prompts = ["a cat", "a dog", LONG_PROMPT]
    response = encode(client, service, {"prompts": prompts})
    arrays = arrays_of(response)
    assert arrays["context"].shape == (3, MAX_TOKENS, CONTEXT_DIM)
    assert arrays["unconditional_context"].shape == (3, MAX_TOKENS, CONTEXT_DIM)
    assert arrays["token_count"].tolist() == [4, 4, 102]
    assert arrays["truncated"].tolist() == [False, False, True]
    assert response.headers["x-truncated"] == "0,0,1"
    assert not np.array_equal(arrays["context"][0], arrays["context"][1])


def test_long_prompt_is_truncated_and_reported(
    client: httpx.Client, service: ServiceProcess
) -> None:
    response = encode(client, service, {"prompts": [LONG_PROMPT]})
    arrays = arrays_of(response)
    assert response.headers["x-truncated"] == "1"
    assert arrays["truncated"].tolist() == [True]
    assert arrays["token_count"][0] > MAX_TOKENS
    assert arrays["token_count"][0] == 102
    # Truncation keeps the first 75 prompt tokens: the same as a prompt of exactly 75 words.
    exact = arrays_of(encode(client, service, {"prompts": ["cat " * 75]}))
    assert exact["truncated"].tolist() == [False]
    assert exact["token_count"].tolist() == [MAX_TOKENS]
    np.testing.assert_array_equal(arrays["context"], exact["context"])


def test_deterministic(client: httpx.Client, service: ServiceProcess) -> None:
    payload = {"prompts": ["a red bicycle"], "negative_prompts": ["blurry"]}
    assert encode(client, service, payload).content == encode(client, service, payload).content


def test_batch_rows_are_independent(client: httpx.Client, service: ServiceProcess) -> None:
    pair = arrays_of(encode(client, service, {"prompts": ["a cat", "a dog"]}))
    dog = arrays_of(encode(client, service, {"prompts": ["a dog"]}))
    np.testing.assert_allclose(pair["context"][1], dog["context"][0], rtol=1e-5, atol=1e-5)


def test_unconditional_is_the_empty_prompt(client: httpx.Client, service: ServiceProcess) -> None:
    arrays = arrays_of(encode(client, service, {"prompts": [""]}))
    np.testing.assert_allclose(
        arrays["context"], arrays["unconditional_context"], rtol=1e-6, atol=1e-6
    )


def test_negative_prompts(client: httpx.Client, service: ServiceProcess) -> None:
    prompts = ["a cat", "a dog"]
    default = arrays_of(encode(client, service, {"prompts": prompts}))
    nulls = arrays_of(encode(client, service, {"prompts": prompts, "negative_prompts": [None, ""]}))
    np.testing.assert_array_equal(default["unconditional_context"], nulls["unconditional_context"])
    negative = arrays_of(
        encode(client, service, {"prompts": prompts, "negative_prompts": ["blurry", None]})
    )
    assert not np.array_equal(
        negative["unconditional_context"][0], default["unconditional_context"][0]
    )
    np.testing.assert_allclose(
        negative["unconditional_context"][1],
        default["unconditional_context"][1],
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(negative["context"], default["context"])


def test_fp16_response(client: httpx.Client, service: ServiceProcess) -> None:
    payload = {"prompts": ["a cat"]}
    full = arrays_of(encode(client, service, payload))
    half = arrays_of(encode(client, service, payload, fp16="true"))
    for name in ("context", "unconditional_context"):
        assert half[name].dtype == np.float16
        np.testing.assert_array_equal(half[name], full[name].astype(np.float16))
    assert half["token_count"].dtype == np.int32
    assert half["truncated"].dtype == np.bool_


def test_max_batch_prompts(client: httpx.Client, service: ServiceProcess) -> None:
    arrays = arrays_of(encode(client, service, {"prompts": [f"cat {i}" for i in range(8)]}))
    assert arrays["context"].shape == (8, MAX_TOKENS, CONTEXT_DIM)


def test_prompt_of_4000_chars_is_fine(client: httpx.Client, service: ServiceProcess) -> None:
    arrays = arrays_of(encode(client, service, {"prompts": ["a" * 4000]}))
    assert arrays["context"].shape == (1, MAX_TOKENS, CONTEXT_DIM)


# --- bad calls ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": ["a" * 4001]}, "prompts"),
        ({"prompts": ["ok", "b" * 5000]}, "prompts"),
        ({"prompts": [f"cat {i}" for i in range(9)]}, "prompts"),
        ({"prompts": "a cat"}, "prompts"),
        ({"prompts": [1]}, "prompts.0"),
        ({}, "prompts"),
        ({"prompts": ["a", "b"], "negative_prompts": ["x"]}, "negative_prompts"),
        ({"prompts": ["a"], "negative_prompts": ["x", "y"]}, "negative_prompts"),
        ({"prompts": ["a"], "negative_prompts": ["n" * 4001]}, "negative_prompts"),
        ([["a cat"]], "body"),
    ],
)
def test_bad_payload_is_422(
    client: httpx.Client, service: ServiceProcess, payload: Any, param: str
) -> None:
    assert_error(encode(client, service, payload), 422, param=param)


def test_invalid_json_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    response = client.post(f"{service.url}{ROUTE}", content=b'{"prompts": [', headers=JSON_HEADERS)
    assert_error(response, 422, error_type="invalid_request_error")


def test_invalid_json_param_is_body(client: httpx.Client, service: ServiceProcess) -> None:
    response = client.post(f"{service.url}{ROUTE}", content=b'{"prompts": [', headers=JSON_HEADERS)
    assert_error(response, 422, param="body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-npz"])
def test_wrong_content_type_is_refused(
    client: httpx.Client, service: ServiceProcess, content_type: str
) -> None:
    """A JSON route: FastAPI does not parse a non-JSON body, so the body is invalid."""
    response = client.post(
        f"{service.url}{ROUTE}",
        content=body_of({"prompts": ["a cat"]}),
        headers={"content-type": content_type},
    )
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, param="body")


def test_service_still_good_after_bad_calls(client: httpx.Client, service: ServiceProcess) -> None:
    assert arrays_of(encode(client, service, {"prompts": ["a cat"]}))["context"].shape == (
        1,
        MAX_TOKENS,
        CONTEXT_DIM,
    )


def test_an_idle_connection_outlives_a_clients_five_second_expiry(service: ServiceProcess) -> None:
    # httpx drops idle connections after 5 s, uvicorn's default closed them after 5 s too:
    # a request sent at that instant met a closing socket. The server now waits longer
    # (SDSERVE_KEEP_ALIVE_S, default 75 s), so after 6 s idle the same socket still works.
    import http.client
    import socket
    import time

    request = f"GET /healthz HTTP/1.1\r\nHost: {service.host}\r\n\r\n".encode()
    with socket.create_connection((service.host, service.port), timeout=10) as conn:
        for idle_before_s in (0, 6):
            time.sleep(idle_before_s)
            conn.sendall(request)
            # Parse one whole response (headers and body may arrive in separate segments).
            response = http.client.HTTPResponse(conn)
            response.begin()
            assert response.status == 200
            assert response.read() == b'{"status":"ok"}'
            assert not response.will_close
