"""The move to MediaPipe's Tasks API (numpy 2) keeps the results users had: pose landmarks, try-on masks and
blendshapes on real photos are pinned to what the legacy ``mediapipe.solutions`` (0.10.21) gave.

The reference file was recorded with mediapipe 0.10.21 and numpy 1.26 (see its "source"), not by this code."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from editlab.models.expression.blendshapes import FaceEncoder, landmarker_path
from editlab.models.tryon.mask import tryon_mask
from editlab.models.tryon.pose import PoseEstimator

DATA = Path(__file__).resolve().parents[1] / "data"
REF = json.loads((DATA / "mediapipe_legacy_reference.json").read_text())
HAND_TIPS = list(range(17, 23))  # pinky/index/thumb tips: the camera man's hands hold the camera


def rgb(name):
    image = getattr(data, name)()
    return np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image)


@pytest.fixture(scope="module")
def poses():
    with PoseEstimator() as estimator:
        return {name: estimator(rgb(name)) for name in ("astronaut", "camera")}


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_pose_landmarks_match_the_legacy_solution(poses, name):
    new = poses[name].landmarks[:, :2]
    old = np.array(REF["pose"][name])
    dist = np.linalg.norm(new - old, axis=1)
    body = [i for i in range(33) if i not in HAND_TIPS]
    assert dist[body].max() < 6.0, {i: round(float(dist[i]), 1) for i in body if dist[i] >= 6.0}
    assert np.median(dist) < 1.0
    assert dist[HAND_TIPS].max() < 30.0  # finger tips: up to 24 px apart on the camera man's hands


@pytest.mark.parametrize("category", ["upper", "hat"])
def test_tryon_masks_match_the_legacy_solution(poses, category):
    old = cv2.imread(str(DATA / f"legacy_astronaut_mask_{category}.png"), cv2.IMREAD_GRAYSCALE) > 127
    new = tryon_mask(poses["astronaut"], category) > 0.5
    iou = (old & new).sum() / (old | new).sum()
    assert iou > 0.97, iou
    # how far the boundary moved: each changed pixel's distance to the old mask's edge
    inside = cv2.distanceTransform(old.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~old).astype(np.uint8), cv2.DIST_L2, 5)
    shift = np.where(old, inside, outside)[old ^ new]
    assert shift.size == 0 or np.percentile(shift, 99) <= 5.0


def test_blendshapes_match_the_legacy_release():
    with FaceEncoder(landmarker_path()) as encoder:
        faces = encoder.faces(rgb("astronaut"))
    assert len(faces) == 1
    assert np.abs(faces[0].values - np.array(REF["blendshapes_astronaut"])).max() < 1e-3


def test_person_mask_comes_with_the_pose(poses):
    seg = poses["astronaut"].segmentation
    assert seg is not None and seg.shape == (512, 512) and seg.dtype == np.float32
    assert 0.3 < (seg > 0.5).mean() < 0.6  # the astronaut fills about 43% of the photo


def test_landmarkers_close():
    estimator = PoseEstimator()
    estimator.close()
    estimator.close()  # twice is harmless
    with pytest.raises(Exception):
        estimator(rgb("astronaut"))
