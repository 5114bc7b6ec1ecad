"""Print the pip requirements of the sdserve package for the given extras, one a line.

The Dockerfiles install these in a layer of their own before copying the source, so a
code change rebuilds seconds of image, not the gigabytes of TensorFlow below it:

    python requirements.py pyproject.toml cpu > requirements.txt

pyproject.toml stays the one place dependencies are declared. Standard library only: it
runs in the bare builder image before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of each named extra, in declaration order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    lines = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            known = ", ".join(sorted(optional)) or "none"
            raise SystemExit(f"unknown extra {extra!r} (pyproject.toml has: {known})")
        lines.extend(optional[extra])
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: requirements.py PYPROJECT [EXTRA ...]", file=sys.stderr)
        return 2
    extras = [e for arg in argv[2:] for e in arg.split(",") if e]
    print("\n".join(requirements(Path(argv[1]), extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
