"""Quality per step: each sampler's held-out accuracy on tiny at a few step counts
(`python -m benchmarks.samplers`).

For each sampler (DDIM, DPM++ 2M, DPM++ 2M Karras, Euler ancestral: one section each)
and each step count (5, 10, 15, 25 by default), tiny draws one image per held-out prompt
(`training.evaluate.text_to_image`: the model card's prompts, seeds, guidance and judge,
only the sampler and steps differ) through the in-process serving chain; the report gives
colour + shape accuracy (and colour, shape, place, size) per configuration and names the
fewest measured steps at which each sampler is within 2 points of DDIM at 25 steps.
Every sampler sees the same prompts with the same seeds, so the comparison is paired.

`measure` runs the chain, `report` writes samplers.md and samplers.png into --out-dir
(default benchmarks/results) next to the raw samplers.json.
"""

import os

# Before anything imports Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
