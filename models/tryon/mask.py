"""The agnostic mask: the region of a person image to replace for a product category, from pose landmarks and
person segmentation. Face and hands are kept out of garment masks unless asked.

Every size is relative to the shoulder width (or the ear distance for head items), so masks scale with the person.
"""
from __future__ import annotations

import numpy as np

from .pose import (FACE, FEET, HANDS, L_ANKLE, L_EAR, L_ELBOW, L_EYE, L_HIP, L_KNEE, L_SHOULDER, L_WRIST, MOUTH_L,
                   MOUTH_R, NOSE, R_ANKLE, R_EAR, R_ELBOW, R_EYE, R_HIP, R_KNEE, R_SHOULDER, R_WRIST, Pose)

CATEGORIES = ("upper", "lower", "dress", "full", "shoes", "hat", "glasses", "bag", "necklace", "custom")
GARMENTS = ("upper", "lower", "dress", "full", "necklace")


def _poly(mask, points):
    import cv2

    pts = np.asarray(points, np.float32)
    hull = cv2.convexHull(pts.round().astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)


def _limb(mask, a, b, width):
    import cv2

    cv2.line(mask, tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(b)), 1,
             max(1, int(round(width))), cv2.LINE_AA)


def _disc(mask, centre, radius):
    import cv2

    cv2.circle(mask, tuple(int(v) for v in np.round(centre)), max(1, int(round(radius))), 1, -1)


def _box(mask, x0, y0, x1, y1):
    h, w = mask.shape
    x0, x1 = int(np.clip(np.floor(min(x0, x1)), 0, w)), int(np.clip(np.ceil(max(x0, x1)), 0, w))
    y0, y1 = int(np.clip(np.floor(min(y0, y1)), 0, h)), int(np.clip(np.ceil(max(y0, y1)), 0, h))
    mask[y0:y1, x0:x1] = 1


def _torso_core(pose: Pose) -> list:
    p = pose.point
    return [p(L_SHOULDER), p(R_SHOULDER), p(R_HIP), p(L_HIP)]


def _upper(mask, pose, sw):
    p = pose.point
    up = np.array([0.0, -0.12 * sw])
    out = (p(L_SHOULDER) - p(R_SHOULDER)) / max(np.linalg.norm(p(L_SHOULDER) - p(R_SHOULDER)), 1e-6) * 0.12 * sw
    _poly(mask, [p(L_SHOULDER) + up + out, p(R_SHOULDER) + up - out, p(R_HIP) - out * 0.5, p(L_HIP) + out * 0.5])
    for a, b, c in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
        _limb(mask, p(a), p(b), 0.35 * sw)
        _limb(mask, p(b), p(c), 0.28 * sw)


def _lower(mask, pose, sw, to_ankles=True):
    p = pose.point
    _poly(mask, [p(L_HIP), p(R_HIP), p(R_KNEE), p(L_KNEE)])
    for a, b, c in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        _limb(mask, p(a), p(b), 0.45 * sw)
        if to_ankles:
            _limb(mask, p(b), p(c), 0.35 * sw)


def region(pose: Pose, category: str) -> np.ndarray:
    """The hard (0/1) region of ``category`` before segmentation, keep-outs, grow and feather."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}; got {category!r}")
    h, w = pose.size
    mask = np.zeros((h, w), np.uint8)
    if category == "custom" or not pose.found:
        return mask
    p, sw = pose.point, max(pose.shoulder_width(), 1.0)
    ear = max(float(np.linalg.norm(p(L_EAR) - p(R_EAR))), 0.4 * sw)
    if category in ("upper", "full"):
        _upper(mask, pose, sw)
    if category in ("lower", "full"):
        _lower(mask, pose, sw)
    if category == "dress":
        _upper(mask, pose, sw)
        _poly(mask, [p(L_HIP) + [0.25 * sw, 0], p(R_HIP) - [0.25 * sw, 0], p(R_KNEE) - [0.4 * sw, 0],
                     p(L_KNEE) + [0.4 * sw, 0]])
    if category == "shoes":
        for i in FEET:
            _disc(mask, p(i), 0.22 * sw)
        _poly(mask, [p(i) for i in FEET[::2]])
        _poly(mask, [p(i) for i in FEET[1::2]])
    if category == "hat":
        eye_y = min(p(L_EYE)[1], p(R_EYE)[1])
        cx = p(NOSE)[0]
        _box(mask, cx - 1.0 * ear, eye_y - 1.6 * ear, cx + 1.0 * ear, eye_y)
    if category == "glasses":
        eyes = np.stack([p(i) for i in range(1, 7)])
        (x0, y0), (x1, y1) = eyes.min(0), eyes.max(0)
        _box(mask, x0 - 0.3 * ear, y0 - 0.25 * ear, x1 + 0.3 * ear, y1 + 0.25 * ear)
    if category == "necklace":
        mouth_y = max(p(MOUTH_L)[1], p(MOUTH_R)[1])
        shoulder_y = (p(L_SHOULDER)[1] + p(R_SHOULDER)[1]) / 2
        cx = (p(L_SHOULDER)[0] + p(R_SHOULDER)[0]) / 2
        _box(mask, cx - 0.35 * sw, mouth_y + 0.15 * ear, cx + 0.35 * sw, shoulder_y + 0.35 * sw)
    if category == "bag":
        for wrist, hip in ((L_WRIST, L_HIP), (R_WRIST, R_HIP)):
            _disc(mask, p(wrist), 0.55 * sw)
            _disc(mask, p(hip) + [0, 0.2 * sw], 0.45 * sw)
    return mask


def keep_out(pose: Pose, keep_face: bool = True, keep_hands: bool = True) -> np.ndarray:
    """Areas a garment mask must not touch: the face (its landmarks' hull, padded) and the hands."""
    h, w = pose.size
    out = np.zeros((h, w), np.uint8)
    if not pose.found:
        return out
    p, sw = pose.point, max(pose.shoulder_width(), 1.0)
    ear = max(float(np.linalg.norm(p(L_EAR) - p(R_EAR))), 0.4 * sw)
    if keep_face:
        face = np.stack([p(i) for i in FACE])
        centre = face.mean(0)
        padded = centre + (face - centre) * 1.35
        _poly(out, list(padded) + [p(NOSE) + [0, 0.35 * ear], p(NOSE) - [0, 0.9 * ear]])
    if keep_hands:
        for i in HANDS:
            _disc(out, p(i), 0.12 * sw)
    return out


def tryon_mask(pose: Pose, category: str, grow: int = 0, feather: int = 0, keep_face: bool = True,
               keep_hands: bool = True, use_segmentation: bool = True) -> np.ndarray:
    """(H, W) float32 in [0, 1]. Garments are limited to the person (segmentation, dilated) except the
    shoulder-to-hip core, which is always in; feathering only softens inward, so outside stays exactly 0."""
    import cv2

    hard = region(pose, category)
    if category in GARMENTS and pose.found:
        if use_segmentation and pose.segmentation is not None:
            sw = max(pose.shoulder_width(), 1.0)
            k = max(3, int(0.15 * sw) | 1)
            person = cv2.dilate((pose.segmentation > 0.5).astype(np.uint8), np.ones((k, k), np.uint8))
            hard = hard & person
        if category != "lower":
            _poly(hard, _torso_core(pose))
        hard = hard & (1 - keep_out(pose, keep_face, keep_hands))
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        hard = cv2.dilate(hard, kernel)
        if category in GARMENTS:
            hard = hard & (1 - keep_out(pose, keep_face, keep_hands))
    mask = hard.astype(np.float32)
    if feather > 0 and mask.any():
        soft = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather / 2.0)
        mask = np.minimum(mask, soft * 2.0).clip(0, 1) * (hard > 0)  # soft only inside, exactly 0 outside
    return mask
