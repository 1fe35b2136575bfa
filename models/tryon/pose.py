"""Body pose from MediaPipe (33 landmarks, legacy ``solutions.pose``, model complexity 1, which ships its model),
and an OpenPose-style render of it. Static-image mode: the same image gives the same landmarks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def estimate_pose(image: np.ndarray) -> Pose:
    """image (H, W, 3) uint8 RGB -> Pose; ``found`` is False when no person is seen."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got {image.shape} {image.dtype}")
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True) as pose:
        result = pose.process(np.ascontiguousarray(image))
    if result.pose_landmarks is None:
        return Pose(np.zeros((0, 4), np.float32), (h, w), None)
    marks = np.array([[p.x * w, p.y * h, p.z, p.visibility] for p in result.pose_landmarks.landmark], np.float32)
    seg = None if result.segmentation_mask is None else np.asarray(result.segmentation_mask, np.float32)
    return Pose(marks, (h, w), seg)


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
