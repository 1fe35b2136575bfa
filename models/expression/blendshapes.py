"""Facial blendshapes: MediaPipe's face landmarker (52 ARKit coefficients, head-pose matrix, 478 landmarks),
presets and edits of the coefficients, and the FLAME-55 expression vector (50 expression, 2 eyelid, 3 jaw).

The landmarker's face detector works at low resolution, so faces in a wide picture (two photos side by side) are
also searched in overlapping square windows; detections of the same face are merged, and faces are ordered left to
right.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..mediapipe_files import task_file

ARKIT_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
assert len(ARKIT_NAMES) == 52

PRESETS = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8, "cheekSquintLeft": 0.3, "cheekSquintRight": 0.3},
    "laugh": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0, "jawOpen": 0.5, "cheekSquintLeft": 0.6,
              "cheekSquintRight": 0.6, "eyeSquintLeft": 0.4, "eyeSquintRight": 0.4},
    "surprise": {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.8,
                 "eyeWideRight": 0.8, "jawOpen": 0.6},
    "anger": {"browDownLeft": 0.9, "browDownRight": 0.9, "noseSneerLeft": 0.5, "noseSneerRight": 0.5,
              "mouthPressLeft": 0.5, "mouthPressRight": 0.5, "eyeSquintLeft": 0.4, "eyeSquintRight": 0.4},
    "sadness": {"browInnerUp": 0.7, "mouthFrownLeft": 0.7, "mouthFrownRight": 0.7, "mouthShrugLower": 0.4},
    "wink": {"eyeBlinkLeft": 1.0, "mouthSmileLeft": 0.4, "cheekSquintLeft": 0.3},
    "jaw_open": {"jawOpen": 1.0},
    "pout": {"mouthPucker": 0.9, "mouthFunnel": 0.3},
}
FLAME_SIZE = 55  # 50 expression + 2 eyelid + 3 jaw (the expression adapter's released input)
FLAME_EXPRESSION_RANGE = (-3.0, 3.0)  # expression PCA coefficients, in standard deviations
FLAME_EYELID_RANGE = (0.0, 1.0)
FLAME_JAW_RANGE = (-0.5, 0.5)  # jaw rotation, axis-angle radians


@dataclass
class Blendshapes:
    """One face's expression: ARKit-52 coefficients in [0, 1] (or a FLAME-55 vector), with where the face was."""
    values: np.ndarray  # (52,) ARKit, or (55,) FLAME
    space: str = "arkit52"  # or "flame55"
    head_pose: np.ndarray | None = None  # (4, 4) facial transformation matrix
    box: tuple | None = None  # x0, y0, x1, y1 in pixels
    landmarks: np.ndarray | None = None  # (478, 3): x, y in pixels, z
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        names = ARKIT_NAMES if self.space == "arkit52" else [f"flame_{i}" for i in range(FLAME_SIZE)]
        return {"space": self.space, "values": {n: round(float(v), 4) for n, v in zip(names, self.values)},
                "box": list(self.box) if self.box else None,
                "head_pose": self.head_pose.round(4).tolist() if self.head_pose is not None else None}


def landmarker_path(extra_dirs: list[str] = ()) -> str:
    """The face_landmarker.task file: in the given folders first (ComfyUI's models), then in installed packages."""
    return task_file("face_landmarker.task", extra_dirs)


class FaceEncoder:
    def __init__(self, model_path: str, max_faces: int = 8):
        import mediapipe as mp
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        self._mp = mp
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=model_path), output_face_blendshapes=True,
            output_facial_transformation_matrixes=True, num_faces=max_faces,
            running_mode=vision.RunningMode.IMAGE)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def close(self) -> None:
        """Release the landmarker's native graph (threads and buffers); the encoder is unusable afterwards."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "FaceEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _detect(self, image: np.ndarray, x0: int, y0: int) -> list[Blendshapes]:
        h, w = image.shape[:2]
        result = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                        data=np.ascontiguousarray(image)))
        faces = []
        for i, marks in enumerate(result.face_landmarks):
            pts = np.array([[p.x * w + x0, p.y * h + y0, p.z] for p in marks], np.float32)
            values = np.zeros(52, np.float32)
            for c in result.face_blendshapes[i]:
                if c.category_name in ARKIT_NAMES:
                    values[ARKIT_NAMES.index(c.category_name)] = c.score
            matrix = np.asarray(result.facial_transformation_matrixes[i], np.float32) \
                if result.facial_transformation_matrixes else None
            box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
            faces.append(Blendshapes(values, "arkit52", matrix, box, pts))
        return faces

    def faces(self, image: np.ndarray) -> list[Blendshapes]:
        """All faces in an (H, W, 3) uint8 RGB image, left to right."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        found = self._detect(image, 0, 0)
        side = min(h, w)
        if max(h, w) > 1.3 * side:  # wide or tall: also look in overlapping square windows
            step = side // 2
            for start in range(0, max(h, w) - side + step, step):
                start = min(start, max(h, w) - side)
                crop = image[:, start:start + side] if w >= h else image[start:start + side]
                found += self._detect(crop, start if w >= h else 0, 0 if w >= h else start)
        return sorted(_merge(found), key=lambda f: (f.box[0] + f.box[2]) / 2)


def from_host_faces(face_landmarks: dict, image_index: int = 0) -> list[Blendshapes]:
    """The faces of one image of a FACE_LANDMARKS value (what ComfyUI's own ``MediaPipeFaceLandmarker`` node returns,
    0.38+: ``{"frames": [[face, ...], ...], "image_size": (H, W), ...}``, each face with ``blendshapes`` {name:
    score}, ``bbox_xyxy``, ``landmarks_3d`` or ``landmarks_xy`` in pixels and ``transformation_matrix``) as this
    module's Blendshapes, left to right like :meth:`FaceEncoder.faces`. The host's port computes the same 52 ARKit
    categories under the same names."""
    if not isinstance(face_landmarks, dict) or not isinstance(face_landmarks.get("frames"), (list, tuple)):
        raise ValueError("expected the FACE_LANDMARKS output of ComfyUI's MediaPipe Face Landmarker node "
                         "(a dict with 'frames')")
    frames = face_landmarks["frames"]
    if not 0 <= image_index < len(frames):
        raise ValueError(f"it holds {len(frames)} image(s), not an image {image_index}")
    faces = []
    for face in frames[image_index] or []:
        scores = face.get("blendshapes") or {}
        values = np.array([float(scores.get(n, 0.0)) for n in ARKIT_NAMES], np.float32).clip(0.0, 1.0)
        marks = face.get("landmarks_3d")
        if marks is None:
            marks = face.get("landmarks_xy")
        pts = None if marks is None else np.asarray(marks, np.float32).reshape(-1, np.asarray(marks).shape[-1])
        if pts is not None and pts.shape[1] == 2:
            pts = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], 1)
        box = face.get("bbox_xyxy")
        box = tuple(float(v) for v in box) if box is not None else \
            ((float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
             if pts is not None else None)
        matrix = face.get("transformation_matrix")
        faces.append(Blendshapes(values, "arkit52", None if matrix is None else np.asarray(matrix, np.float32),
                                 box, pts, {"source": "ComfyUI MediaPipe Face Landmarker"}))
    return sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2 if f.box else 0.0)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _merge(faces: list[Blendshapes]) -> list[Blendshapes]:
    """Keep one detection per face: the larger of two overlapping ones (seen at the higher resolution)."""
    kept: list[Blendshapes] = []
    for face in sorted(faces, key=lambda f: -(f.box[2] - f.box[0])):
        if all(_iou(face.box, k.box) < 0.4 for k in kept):
            kept.append(face)
    return kept


def edit(base: Blendshapes | None, preset: str = "neutral", values: dict | None = None, symmetric: bool = False,
         intensity: float = 1.0) -> Blendshapes:
    """Start from ``base`` (or zeros), apply a preset, then explicit values; symmetric mirrors Left/Right edits;
    ``intensity`` scales the result; every coefficient is clamped to [0, 1]."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    out = base.values.copy() if base is not None and base.space == "arkit52" else np.zeros(52, np.float32)
    if base is not None and base.space != "arkit52":
        raise ValueError("these blendshapes are FLAME-55; ARKit edits need ARKit-52 blendshapes")
    changes = {**PRESETS[preset], **(values or {})}
    for name, value in changes.items():
        if name not in ARKIT_NAMES:
            raise ValueError(f"{str(name)[:60]!r} is not an ARKit blendshape name (e.g. mouthSmileLeft, jawOpen)")
        if not np.isfinite(float(value)):
            raise ValueError(f"{name!r} must be a finite number; got {str(value)[:60]}")
        out[ARKIT_NAMES.index(name)] = float(value)
        if symmetric:
            for a, b in (("Left", "Right"), ("Right", "Left")):
                if name.endswith(a):
                    out[ARKIT_NAMES.index(name[: -len(a)] + b)] = float(value)
    out = np.clip(out * float(intensity), 0.0, 1.0).astype(np.float32)
    meta = dict(base.meta) if base is not None else {}
    return Blendshapes(out, "arkit52", base.head_pose if base else None, base.box if base else None,
                       base.landmarks if base else None, meta)


def flame(expression: list[float], eyelids: list[float], jaw: list[float]) -> Blendshapes:
    """A FLAME-55 vector from its parts, each clamped to the authors' ranges."""
    if len(expression) > 50 or len(eyelids) != 2 or len(jaw) != 3:
        raise ValueError(f"FLAME needs up to 50 expression, 2 eyelid and 3 jaw values; got {len(expression)}, "
                         f"{len(eyelids)}, {len(jaw)}")
    vec = np.zeros(FLAME_SIZE, np.float32)
    vec[:len(expression)] = np.clip(expression, *FLAME_EXPRESSION_RANGE)
    vec[50:52] = np.clip(eyelids, *FLAME_EYELID_RANGE)
    vec[52:55] = np.clip(jaw, *FLAME_JAW_RANGE)
    return Blendshapes(vec, "flame55")
