"""Checkpoints people have -> weights our sd-v1 / sd-v2 families load (model code only).

* :mod:`shared.convert.plan` — which diffusers-named tensor fills each keras-cv weight;
* :mod:`shared.convert.layouts` — where the original (CompVis / A1111) layout keeps them;
* :mod:`shared.convert.sources` / :mod:`shared.convert.tensors` — reading a diffusers
  folder or a single ``.safetensors`` file with safetensors' numpy API (never a pickle);
* :mod:`shared.convert.convert` — ``sdserve convert``: check everything, then write the
  component files, SHA256SUMS and the manifest;
* :mod:`shared.convert.keras_weights` — loading a converted file into a keras-cv model;
* :mod:`shared.convert.lora` — ``SDSERVE_LORA``: merging LoRA files at load.

No FastAPI, no torch: torch and diffusers appear only in the reference tests.
"""
