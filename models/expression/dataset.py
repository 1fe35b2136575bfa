"""Training images for the expression adapters: square face crops, as Arc2Face trains on aligned face crops rather
than whole photos squashed to a square.

A face is found with the same MediaPipe face landmarker that measures the blendshapes; the crop is a square centred
on the face's landmark box (brows to chin, ear to ear), ``MARGIN`` times its larger side, moved inside the photo
where the photo is large enough, padded with the photo's edge pixels where it is not. The square is then resized
(both sides by the same factor: no squashing). Photos without a face are skipped and listed.
Coordinates are pixels of the source photo, x to the right, y down.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MARGIN = 2.0  # crop side / the landmark box's larger side: the whole head with some hair, neck and background


@dataclass
class FaceCrop:
    """Where a training crop came from: the square (x0, y0, side) in the source photo and the face box inside it."""
    x0: int
    y0: int
    side: int
    box: tuple  # the face's landmark box in the source photo: x0, y0, x1, y1


def face_square(box, width: int, height: int, margin: float = MARGIN) -> tuple[int, int, int]:
    """(x0, y0, side): a square holding ``box`` with ``margin`` times its larger side, inside the photo when the
    photo allows (it may reach outside only when the photo is smaller than the square on that axis)."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    face = max(bx1 - bx0, by1 - by0)
    side = max(min(margin * face, float(min(width, height))), face)
    side = int(math.ceil(side)) + 2  # integer pixels, a pixel of slack on each side of the box
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2

    def place(centre, size):
        start = int(math.floor(centre - side / 2))
        return min(max(start, 0), size - side) if side <= size else start

    return place(cx, width), place(cy, height), side


def crop_square(image: np.ndarray, x0: int, y0: int, side: int, resolution: int) -> np.ndarray:
    """The (side x side) square at (x0, y0) of an (H, W, 3) uint8 image, padded with edge pixels where it reaches
    outside, resized to (resolution x resolution) with Lanczos."""
    from PIL import Image

    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    square = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
    return np.asarray(Image.fromarray(square).resize((resolution, resolution), Image.LANCZOS))


def largest_face(faces: list):
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def face_crop(image: np.ndarray, faces: list, resolution: int, margin: float = MARGIN):
    """The largest of ``faces`` (the encoder's detections on ``image``) cropped square: (crop, face, FaceCrop)."""
    face = largest_face(faces)
    x0, y0, side = face_square(face.box, image.shape[1], image.shape[0], margin)
    return crop_square(image, x0, y0, side, resolution), face, FaceCrop(x0, y0, side, tuple(face.box))


@dataclass
class FaceTrainingSet:
    images: list = field(default_factory=list)  # (resolution, resolution, 3) uint8 crops
    values: list = field(default_factory=list)  # the cropped face's blendshapes, (52,) float32
    names: list = field(default_factory=list)
    crops: list = field(default_factory=list)  # FaceCrop per image
    skipped: list = field(default_factory=list)  # names of photos without a face
    unreadable: list = field(default_factory=list)  # "name: why"


def face_training_set(files: list[tuple[str, str]], encoder, resolution: int, read: Callable[[str], np.ndarray],
                      margin: float = MARGIN, check: Callable[[], None] | None = None) -> FaceTrainingSet:
    """Square face crops of ``files`` ((name, path) pairs) with their blendshapes. ``read(path)`` returns an
    (H, W, 3) uint8 image or raises ``ValueError`` with the reason it cannot (that file is listed as unreadable);
    ``check()`` runs before each file (interruption)."""
    out = FaceTrainingSet()
    for name, path in files:
        if check:
            check()
        try:
            rgb = read(path)
        except ValueError as exc:
            out.unreadable.append(f"{name}: {exc}")
            continue
        faces = encoder.faces(rgb)
        if not faces:
            out.skipped.append(name)
            continue
        crop, face, where = face_crop(rgb, faces, resolution, margin)
        out.images.append(crop)
        out.values.append(face.values)
        out.names.append(name)
        out.crops.append(where)
    return out
