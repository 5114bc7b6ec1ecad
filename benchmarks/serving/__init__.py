"""Serving benchmarks: the served system end to end (`python -m benchmarks.serving`).

Real service processes (`python -m services.diffusion`, `python -m central`, ...) are
started on free ports with `shared.service_process.ServiceProcess`, exactly as `sdserve
up` would start them, and driven over HTTP from this process. One module per section:

1. topologies        the same requests sent one at a time through all-in-one,
                     three-endpoints and hybrid gateways (tiny 64x64 and sd-v1 128x128,
                     random weights): median latency per topology, the
                     three-endpoints/all-in-one ratio and the per-stage breakdown from
                     each response's `timings`.
2. keras_cv_compare  our in-process all-in-one Chain against keras-cv's own
                     `StableDiffusion.text_to_image` (jit_compile=True, its default, and
                     False) on the very same sd-v1 Keras models, 128x128, batch 1 (child
                     process).
3. concurrency       1..16 closed-loop clients against a three-endpoints stack,
                     continuous batching on vs off: throughput and p50/p95 latency.
4. overload          64 clients against queues of 4: every request must end 200 or 503,
                     and each process's resident memory must stay flat.
5. wire              bytes per request between central and the stages: our npz (fp32,
                     fp16) vs base64 float32 JSON, tiny 64x64 and sd-v1 512x512 shapes.
6. locust_run        benchmarks/locustfile.py run headless against a tiny stack (if
                     locust is installed).

`stack` starts the processes, `records` types the measurements, `targets` and `findings`
judge them, `report` / `report_tables` / `chart` write `serving.md` and `serving.png`
into --out-dir (default benchmarks/results) next to the raw `serving.json`.
"""

import os

# Before anything imports Keras: the keras-cv worker builds models in this process.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
