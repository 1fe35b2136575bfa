"""Body pose from MediaPipe's Tasks ``PoseLandmarker`` (33 landmarks and a person mask, ``pose_landmarker_full``),
and an OpenPose-style render of it. Image mode: the same image gives the same landmarks.

The model file is ``pose_landmarker_full.task``, found by ``models.mediapipe_files.task_file`` (ComfyUI's
``models/mediapipe/`` first, then a registry package that ships it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mediapipe_files import task_file

# MediaPipe's 33 landmark indices used here
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, MOUTH_L, MOUTH_R = 0, 2, 5, 7, 8, 9, 10
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
FACE = list(range(0, 11))
HANDS = list(range(15, 23))
FEET = list(range(27, 33))
# OpenPose-like limb colours (RGB), one per connection
LIMBS = [((11, 12), (255, 0, 0)), ((11, 13), (255, 85, 0)), ((13, 15), (255, 170, 0)), ((12, 14), (255, 255, 0)),
         ((14, 16), (170, 255, 0)), ((11, 23), (85, 255, 0)), ((12, 24), (0, 255, 0)), ((23, 24), (0, 255, 85)),
         ((23, 25), (0, 255, 170)), ((25, 27), (0, 255, 255)), ((24, 26), (0, 170, 255)), ((26, 28), (0, 85, 255)),
         ((27, 31), (0, 0, 255)), ((28, 32), (85, 0, 255)), ((0, 2), (170, 0, 255)), ((0, 5), (255, 0, 255)),
         ((2, 7), (255, 0, 170)), ((5, 8), (255, 0, 85))]


@dataclass
class Pose:
    landmarks: np.ndarray  # (33, 4): x, y in pixels, z (MediaPipe's relative depth), visibility in [0, 1]
    size: tuple[int, int]  # (height, width) of the image
    segmentation: np.ndarray | None = None  # (H, W) person probability

    @property
    def found(self) -> bool:
        return self.landmarks.shape[0] == 33

    def point(self, index: int) -> np.ndarray:
        return self.landmarks[index, :2]

    def shoulder_width(self) -> float:
        return float(np.linalg.norm(self.point(L_SHOULDER) - self.point(R_SHOULDER))) if self.found else 0.0

    def to_dict(self) -> dict:
        return {"size": list(self.size), "found": self.found,
                "landmarks": [[round(float(v), 3) for v in row] for row in self.landmarks]}


def pose_model_path(extra_dirs=()) -> str:
    return task_file("pose_landmarker_full.task", extra_dirs)


class PoseEstimator:
    """One MediaPipe pose landmarker (image mode, one person, with the person mask). Use as a context manager, or
    call ``close()``: the landmarker holds a native graph until then."""

    def __init__(self, model_path: str | None = None):
        import mediapipe as mp
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        self._mp = mp
        options = vision.PoseLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=model_path or pose_model_path()),
            running_mode=vision.RunningMode.IMAGE, num_poses=1, output_segmentation_masks=True)
        self._landmarker = vision.PoseLandmarker.create_from_options(options)

    def __call__(self, image: np.ndarray) -> Pose:
        """image (H, W, 3) uint8 RGB -> Pose; ``found`` is False when no person is seen."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        result = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                        data=np.ascontiguousarray(image)))
        if not result.pose_landmarks:
            return Pose(np.zeros((0, 4), np.float32), (h, w), None)
        marks = np.array([[p.x * w, p.y * h, p.z, p.visibility or 0.0] for p in result.pose_landmarks[0]],
                         np.float32)
        seg = None
        if result.segmentation_masks:
            seg = np.array(result.segmentation_masks[0].numpy_view(), np.float32).reshape(h, w)
        return Pose(marks, (h, w), seg)

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "PoseEstimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def estimate_pose(image: np.ndarray, model_path: str | None = None) -> Pose:
    """image (H, W, 3) uint8 RGB -> Pose, with a landmarker opened and closed for this one image."""
    with PoseEstimator(model_path) as estimator:
        return estimator(image)


def render_pose(pose: Pose, min_visibility: float = 0.3) -> np.ndarray:
    """Skeleton on black, (H, W, 3) uint8, limbs in OpenPose-style colours; black when no person was found."""
    import cv2

    h, w = pose.size
    canvas = np.zeros((h, w, 3), np.uint8)
    if not pose.found:
        return canvas
    thickness = max(2, int(round(max(h, w) / 160)))
    for (a, b), colour in LIMBS:
        if pose.landmarks[a, 3] >= min_visibility and pose.landmarks[b, 3] >= min_visibility:
            pa, pb = pose.point(a).round().astype(int), pose.point(b).round().astype(int)
            cv2.line(canvas, tuple(int(v) for v in pa), tuple(int(v) for v in pb), colour, thickness, cv2.LINE_AA)
    for i in range(33):
        if pose.landmarks[i, 3] >= min_visibility:
            cv2.circle(canvas, tuple(int(v) for v in pose.point(i).round()), thickness + 1, (255, 255, 255), -1,
                       cv2.LINE_AA)
    return canvas
