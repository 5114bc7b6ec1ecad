"""Per-stage compute under each execution strategy, on this machine (`python -m
benchmarks.stages`).

For each model family (sd-v1 at 128x128, tiny at 64x64 by default) and each execution
strategy (XLA on/off x classifier-free guidance batched or not x precision), measures
after warm-up, over repeated runs:

- the text encoder call for one request: prompt + negative prompt = 2 rows, exactly
  `LocalTextEncoder.encode_sync` (tokenisation included);
- one denoising step with CFG for one image: `shared.sampler.sample_step` on one `Row`,
  which is where `batched_cfg` matters (one batch-2 UNet call, or two batch-1 calls);
- the decoder call for one latent: `LocalDecoder.decode_sync` (batch 1).

The first call of each (trace, plus XLA compilation when XLA is on) is reported
separately. Each family's models are built once per precision; XLA on/off reuses the
same Keras models, recompiled (`ModelRunner(model, xla=...)` calls `model.compile`, which
resets the model's predict function, so the next call retraces under the new setting).

Writes a markdown report (default benchmarks/results/stages.md) and the raw numbers next
to it as JSON (same name, .json). The execution defaults per device live in
`shared.execution.AUTO_STRATEGY`; this is what they are chosen from.

    python -m benchmarks.stages                       # everything (minutes on a 2-core CPU)
    python -m benchmarks.stages --quick               # fewer repeats, a rough look
    python -m benchmarks.stages --families tiny --repeats 50
    python -m benchmarks.stages --skip-xla-for sd-v1  # if XLA compiles are unbearable

Modules: `common` (what is measured, timing), `machine`, `family_bench` (one family at
one precision, in a child process), `report` (stages.md and .json), `__main__` (options
and the child processes).
"""

import os

# Before anything imports Keras: the measuring child processes build models.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
