"""The tiny family's training recipe: the constants the training phases share.

Apart from `training.train_tiny` so that what reads them (the model card's caller, tests)
needs not import the trainer; the command-line defaults stay with its parser.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_WORKDIR = Path("build/tiny-training")
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "shared" / "families" / "tiny_weights"
TRAIN_SCENES = 24_000
CAPTION_DROPOUT = 0.1  # share of captions replaced by "" so guidance has an unconditional
LATENT_NOISE = 0.05  # decoder sees slightly noisy latents: sampled ones are never exact
DECODER_NOISE = 0.02  # the same, while the decoder is fine-tuned alone
# Extra decoder loss weight on the pixels along a shape's outline: a blurred outline
# rounds off a small triangle's tip and a square's corners, and the shape is lost there.
DECODER_EDGE_WEIGHT = 4.0
TEXT_LR_SCALE = 1.0  # the text encoder's learning rate, relative to the UNet's
OFFSET_NOISE = 0.2  # std of the per-image, per-channel constant added to training noise
# Loss weight cap at high noise: 1 + min((1 - a) / a, cap - 1). 10 was needed before the
# layout prior and its mask loss took over colour and place; 4 leaves more of the loss to
# the low-noise steps that draw edges (same text-to-image scores, edits a little better).
HIGH_NOISE_WEIGHT = 4.0
# Extra loss weight on the latent cells the shape covers or borders: the shape is a few
# percent of the image, so the plain loss spends nearly everything on the background.
SHAPE_LOSS_WEIGHT = 4.0
# Weight of the layout map's first channel learning to be the shape's coverage of each
# latent cell, from the prompt alone. The noise-prediction loss barely rewards telling a
# square from a circle (they differ in a few corner cells); this loss does, directly, and
# so teaches the text encoder and the layout prior what the shape words mean.
LAYOUT_LOSS_WEIGHT = 10.0
# Training captions are at most 24 tokens with start and end (the longest paraphrases,
# training.phrasing); the text encoder reads this many leading positions in training, and
# its last one stands for the rest of the 77 (exact: see HoldEndState), far less than all 77.
TEXT_POSITIONS_READ = 28
# Share of training captions worded by training.phrasing's templates (synonyms, other
# orders and forms) instead of training.scenes' one grammar.
PARAPHRASE_SHARE = 0.5
