"""Load test of the gateway's OpenAI images endpoint with locust.

Each simulated user posts `POST /v1/images/generations` back to back (closed loop, no
think time unless SDSERVE_BENCH_WAIT_S is set). A 503 (queue full, with Retry-After) is
counted as a failure named "503 queue full", so locust's summary shows how many requests
the bounded queues refused; any other non-200 is a failure with its status code.

    sdserve up                                   # three endpoints, tiny, port 8000
    locust -f benchmarks/locustfile.py --headless -u 8 -r 2 -t 60s \
        --host http://127.0.0.1:8000

Settings (environment variables, all optional):

- SDSERVE_BENCH_SIZE    image size "WxH" (default 64x64; sd-v1 serves 512x512 by default)
- SDSERVE_BENCH_STEPS   denoising steps (default 25)
- SDSERVE_BENCH_N       images per request (default 1)
- SDSERVE_BENCH_PROMPT  the prompt (default: a fixed one)
- SDSERVE_BENCH_SEED    a fixed seed; unset: each request draws its own
- SDSERVE_BENCH_WAIT_S  seconds each user waits between requests (default 0)
- SDSERVE_BENCH_TIMEOUT_S  client timeout per request (default 120)
"""

from __future__ import annotations

import os

from locust import HttpUser, constant, task

SIZE = os.environ.get("SDSERVE_BENCH_SIZE", "64x64")
STEPS = int(os.environ.get("SDSERVE_BENCH_STEPS", "25"))
N = int(os.environ.get("SDSERVE_BENCH_N", "1"))
PROMPT = os.environ.get("SDSERVE_BENCH_PROMPT", "a lighthouse on a cliff at dusk, oil painting")
SEED = os.environ.get("SDSERVE_BENCH_SEED")
WAIT_S = float(os.environ.get("SDSERVE_BENCH_WAIT_S", "0"))
TIMEOUT_S = float(os.environ.get("SDSERVE_BENCH_TIMEOUT_S", "120"))


class ImagesUser(HttpUser):
    """One client generating images in a closed loop."""

    wait_time = constant(WAIT_S)

    @task
    def generate(self) -> None:
        body: dict[str, object] = {
            "prompt": PROMPT,
            "size": SIZE,
            "n": N,
            "steps": STEPS,
            "response_format": "b64_json",
        }
        if SEED is not None:
            body["seed"] = int(SEED)
        with self.client.post(
            "/v1/images/generations",
            json=body,
            name=f"/v1/images/generations {SIZE} n={N} steps={STEPS}",
            timeout=TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                try:
                    images = len(response.json()["data"])
                except (ValueError, KeyError, TypeError):
                    response.failure("200 without a valid images body")
                    return
                if images != N:
                    response.failure(f"asked for {N} images, got {images}")
                else:
                    response.success()
            elif response.status_code == 503:
                response.failure("503 queue full")
            else:
                response.failure(f"HTTP {response.status_code}")
