"""Where newer ComfyUI has its own node for something the pack does, the pack's nodes take that node's output.

ComfyUI 0.38's `MediaPipeFaceLandmarker` ("Detect Face Landmarks (MediaPipe)", a PyTorch port of the same
face_landmarker task) returns FACE_LANDMARKS: {"frames": [[face, ...]], "image_size": (H, W), ...}, each face with
`blendshapes` {ARKit name: score}, `bbox_xyxy`, `landmarks_xy`/`landmarks_3d` in pixels and `transformation_matrix`.
Its weights are not on these machines, so the value is built in that layout from a real detection of the photo.
"""
import json

import numpy as np
import pytest
import torch
from skimage import data


@pytest.fixture(scope="module")
def expression(comfy_host):
    from editlab.nodes import expression

    return expression


def _host_face(shapes, shift=0.0, smile=None):
    from editlab.models.expression.blendshapes import ARKIT_NAMES

    scores = dict(zip(ARKIT_NAMES, (float(v) for v in shapes.values)))
    if smile is not None:
        scores["mouthSmileLeft"] = smile
    x0, y0, x1, y1 = shapes.box
    pts = shapes.landmarks.copy()
    pts[:, 0] += shift
    return {"bbox_xyxy": np.array([x0 + shift, y0, x1 + shift, y1], np.float32), "blendshapes": scores,
            "landmarks_xy": pts[:, :2], "landmarks_3d": pts, "presence": 1.0, "score": 0.9,
            "transformation_matrix": shapes.head_pose}


def test_face_blendshapes_takes_the_hosts_face_landmarks(expression):
    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    measured, _, _ = expression.EditLabFaceBlendshapes.execute(image=image, face_index=0, allow_no_face=False).result
    # two faces, the second one listed first but to the right of the photo's face, with another smile
    host = {"frames": [[_host_face(measured, shift=250.0, smile=0.05), _host_face(measured)]],
            "image_size": (512, 512), "connection_sets": {}}
    shapes, overlay, text = expression.EditLabFaceBlendshapes.execute(
        image=image, face_index=0, allow_no_face=False, face_landmarks=host).result
    info = json.loads(text)
    assert info["faces"] == 2
    np.testing.assert_allclose(shapes.values, measured.values, atol=1e-6)  # the left face, as the node orders them
    assert shapes.box == pytest.approx(measured.box)
    right, _, _ = expression.EditLabFaceBlendshapes.execute(
        image=image, face_index=1, allow_no_face=False, face_landmarks=host).result
    assert right.values[list(info["values"]).index("mouthSmileLeft")] == pytest.approx(0.05)
    assert overlay.shape == image.shape


def test_bad_host_landmarks_name_the_input(expression):
    from editlab.nodes.common import EditLabInputError

    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    with pytest.raises(EditLabInputError, match="input 'face_landmarks'.*512x512.*256x256"):
        expression.EditLabFaceBlendshapes.execute(image=image, face_index=0, allow_no_face=False,
                                                  face_landmarks={"frames": [[]], "image_size": (256, 256)})
    with pytest.raises(EditLabInputError, match="input 'face_landmarks'.*'frames'"):
        expression.EditLabFaceBlendshapes.execute(image=image, face_index=0, allow_no_face=False,
                                                  face_landmarks={"faces": []})
    with pytest.raises(EditLabInputError, match="input 'image'.*none was found"):
        expression.EditLabFaceBlendshapes.execute(image=image, face_index=0, allow_no_face=False,
                                                  face_landmarks={"frames": [[]], "image_size": (512, 512)})


def test_reference_tokens_append_to_the_hosts_reference_latent(comfy_host):
    """ComfyUI's ReferenceLatent (the Kontext template's node) and Reference Tokens write the same conditioning key:
    chained either way, both references reach the model, in wiring order."""
    from comfy_extras.nodes_edit_model import ReferenceLatent

    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.tryon import EditLabReferenceTokens

    tiny = build_tiny_models("flux", seed=0)
    cond = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("a bag"))
    img_a, img_b = torch.zeros(1, 64, 64, 3), torch.ones(1, 32, 64, 3) * 0.5
    host_latent = {"samples": tiny.vae.encode(img_a)}
    first = ReferenceLatent.execute(cond, host_latent)
    first = first[0] if isinstance(first, tuple) else first.result[0]
    both = EditLabReferenceTokens.execute(first, tiny.vae, img_b, "offset", 1024).result[0]
    refs = both[0][1]["reference_latents"]
    assert len(refs) == 2 and torch.equal(refs[0], host_latent["samples"])
    assert refs[1].shape[-2:] == tiny.vae.encode(img_b).shape[-2:]
    back = ReferenceLatent.execute(EditLabReferenceTokens.execute(cond, tiny.vae, img_b, "offset", 1024).result[0],
                                   host_latent)
    back = back[0] if isinstance(back, tuple) else back.result[0]
    assert len(back[0][1]["reference_latents"]) == 2
