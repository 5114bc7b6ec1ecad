"""Assemble the Hugging Face model repository of one sdserve handler.

    python deploy/hf/build_repo.py HANDLER OUT_DIR [--weights DIR] [--clip-vocab FILE]

HANDLER is all-in-one, text-encoder, diffusion or decoder. OUT_DIR is created if needed
(a clone of the Hub repository is fine: its .git and other files are left alone) and
receives:

* the handler's ``handler.py`` and ``requirements.txt``;
* sdserve's ``shared`` package, vendored: sdserve is not on PyPI, and the
  Inference Toolkit puts the repository directory on ``sys.path`` before it imports
  ``handler.py``, so the package imports from there;
* for the handlers that tokenize (all-in-one, text-encoder), the CLIP BPE vocabulary
  ``bpe_simple_vocab_16e6.txt.gz``, from ``--clip-vocab`` or the copy packaged in
  ``shared/clip_vocab/`` (the handler finds it in the repository);
* with ``--weights DIR``, the weights files of DIR (``*.h5``, ``*.safetensors``,
  ``SHA256SUMS`` and, for a directory ``sdserve convert`` wrote, its manifest
  ``sdserve-weights.json``), which the handler then loads (sha256-checked) instead of
  random ones.

Then push OUT_DIR to the Hub (weights through git-lfs) and create the endpoint; see
deploy/hf/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

HF_DIR = Path(__file__).resolve().parent
ROOT = HF_DIR.parents[1]
HANDLERS = ("all-in-one", "text-encoder", "diffusion", "decoder")
TOKENIZING = frozenset({"all-in-one", "text-encoder"})
PACKAGES = ("shared",)
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
WEIGHTS_PATTERNS = ("*.h5", "*.safetensors", "SHA256SUMS", "sdserve-weights.json")


def _find_clip_vocab(explicit: Path | None) -> Path:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from shared.errors import WeightsError
    from shared.tokenizer import find_clip_vocab  # checks the file's sha256

    try:
        return find_clip_vocab(explicit)
    except WeightsError as exc:
        raise ValueError(f"CLIP vocabulary: {exc}") from None


def build(
    handler: str, out: Path, *, weights: Path | None = None, clip_vocab: Path | None = None
) -> list[Path]:
    """Write the repository of `handler` into `out`; return the paths written."""
    if handler not in HANDLERS:
        raise ValueError(f"unknown handler {handler!r}; expected one of {', '.join(HANDLERS)}")
    if weights is not None and not weights.is_dir():
        raise ValueError(f"--weights: {weights} is not a directory")
    vocab = _find_clip_vocab(clip_vocab) if handler in TOKENIZING else None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("handler.py", "requirements.txt"):
        written.append(Path(shutil.copy2(HF_DIR / handler / name, out / name)))
    for package in PACKAGES:
        target = out / package
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            ROOT / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        written.append(target)
    if vocab is not None:
        written.append(Path(shutil.copy2(vocab, out / CLIP_VOCAB_FILE)))
    if weights is not None:
        files = sorted({f for pattern in WEIGHTS_PATTERNS for f in weights.glob(pattern)})
        if not files:
            raise ValueError(f"--weights: {weights} holds no .h5, .safetensors or SHA256SUMS")
        written += [Path(shutil.copy2(f, out / f.name)) for f in files if f.is_file()]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build_repo.py",
        description="Assemble the Hugging Face model repository of one sdserve handler.",
    )
    parser.add_argument("handler", choices=HANDLERS)
    parser.add_argument("out", type=Path, metavar="OUT_DIR")
    parser.add_argument("--weights", type=Path, default=None, metavar="DIR")
    parser.add_argument("--clip-vocab", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        written = build(args.handler, args.out, weights=args.weights, clip_vocab=args.clip_vocab)
    except (ValueError, OSError) as exc:
        print(f"build_repo.py: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if args.weights is None:
        print(
            "note: no --weights: the endpoint will run RANDOM weights unless SDSERVE_WEIGHTS "
            "is set on it (pretrained downloads keras-cv's files)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
