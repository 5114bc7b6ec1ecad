"""A measurable check that an image shows what a scene caption asks for.

Pixels are classified by their nearest palette colour (within a distance), the largest
connected blob of the asked-for colour is the shape, and:

- colour: that blob covers at least a third of the shape's expected area;
- shape: the blob's fill of its bounding box (square 1.0, circle pi/4 = 0.785,
  triangle 0.5) is nearest to the asked-for shape's;
- place: the blob's centroid lies in the named cell of a 3x3 grid;
- size: the blob's bounding box is nearer the asked-for extent than the other size's;
- background: the commonest palette colour outside the blob is the asked-for background
  (for a two-tone background, in each half).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from training.scenes import COLOURS, PLACES, SIZES, Scene

# RGB distance within which a pixel counts as a palette colour at all.
_MAX_COLOUR_DISTANCE = 70.0
_FILL_BY_SHAPE = {"triangle": 0.5, "circle": float(np.pi / 4), "square": 1.0}
_NOMINAL_AREA = {"triangle": 0.5, "circle": float(np.pi / 4), "square": 1.0}


@dataclass(frozen=True)
class Verdict:
    colour: bool
    shape: bool
    place: bool
    size: bool
    background: bool
    seen_shape: str | None
    fill: float
    blob_pixels: int

    @property
    def colour_and_shape(self) -> bool:
        return self.colour and self.shape


def palette_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) index into COLOURS of each pixel's nearest colour, -1 when none is near."""
    palette = np.array(list(COLOURS.values()), np.float32)
    distances = np.linalg.norm(image[..., None, :].astype(np.float32) - palette, axis=-1)
    labels = distances.argmin(-1)
    labels[distances.min(-1) > _MAX_COLOUR_DISTANCE] = -1
    return labels


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (all False when empty)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        component = [start]
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    component.append((ny, nx))
                    queue.append((ny, nx))
        if len(component) > len(best):
            best = component
    blob = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        blob[list(ys), list(xs)] = True
    return blob


def judge(image: np.ndarray, scene: Scene) -> Verdict:
    """How well a (H, W, 3) uint8 image follows `scene`'s caption."""
    height, width = image.shape[:2]
    labels = palette_labels(image)
    blob = largest_blob(labels == list(COLOURS).index(scene.colour))
    pixels = int(blob.sum())
    scale = width / 64
    extent = SIZES[scene.size] * scale
    expected_area = _NOMINAL_AREA[scene.shape] * extent**2
    background = _background_right(labels, blob, scene)
    if pixels == 0:
        return Verdict(False, False, False, False, background, None, 0.0, 0)
    ys, xs = np.nonzero(blob)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = pixels / float(box_h * box_w)
    seen_shape = min(_FILL_BY_SHAPE, key=lambda s: abs(_FILL_BY_SHAPE[s] - fill))
    row = min(int(ys.mean() / (height / 3)), 2)
    col = min(int(xs.mean() / (width / 3)), 2)
    box = (box_h + box_w) / 2
    nearest_size = min(SIZES, key=lambda s: abs(SIZES[s] * scale - box))
    return Verdict(
        colour=pixels >= expected_area / 3,
        shape=seen_shape == scene.shape,
        place=PLACES[row * 3 + col] == scene.place,
        size=nearest_size == scene.size,
        background=background,
        seen_shape=seen_shape,
        fill=fill,
        blob_pixels=pixels,
    )


def _background_right(labels: np.ndarray, blob: np.ndarray, scene: Scene) -> bool:
    """Whether the commonest palette colour outside the blob is the scene's background
    (each half's, for a two-tone background)."""
    names = list(COLOURS)
    height, width = labels.shape
    if len(scene.background) == 1:
        halves = [np.ones_like(blob)]
    elif scene.vertical_split:
        left = np.zeros_like(blob)
        left[:, : width // 2] = True
        halves = [left, ~left]
    else:
        upper = np.zeros_like(blob)
        upper[: height // 2] = True
        halves = [upper, ~upper]
    for colour, half in zip(scene.background, halves, strict=True):
        seen = labels[half & ~blob]
        seen = seen[seen >= 0]
        if not len(seen) or int(np.bincount(seen).argmax()) != names.index(colour):
            return False
    return True
