"""Live previews against the images they preview (`python -m benchmarks.previews`).

A job streams a preview every few steps (`shared.progress.preview_every`: about ten per
job): the latent drawn by the family's linear map (`FamilySpec.preview_map`), one pixel
per latent cell. This measures, for `tiny` with its embedded weights, how close those
previews come to the final image scaled to preview size (box-downscaled to the latent
grid), with the map tiny declares (fitted by `training.fit_preview`) and with the SD
VAE's factors every family used before (ComfyUI's SD 1.x previews):

1. the last preview at the default 25 steps (step 24), over every held-out prompt with
   a plain background (training.evaluate, the model card's prompts and seeds);
2. every preview of those jobs: the picture forming, step by step;
3. the last preview at 80 steps (step 72, eight steps before the end): the browser test's
   case, on fewer prompts;
4. the map against the decoder itself, on encoded held-out scenes (what
   `training.fit_preview` prints and its unit test checks).

Both maps see the same latents: the same prompts and seeds, the same text encoder, UNet
and decoder; only the diffusion stage's map differs (the run checks that the final
images are identical). Writes previews.md, previews.json and previews.png (previews step
by step beside the final image, for a few prompts) into --out-dir (default
benchmarks/results).

Modules: `measure` (the chains and the numbers), `report` (the markdown and the strip).
"""

import os

# Before anything imports Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
