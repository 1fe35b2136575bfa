"""Expression method properties through the live server (issue 16): Apply Expression at strength 0 runs its patch
and gives the plain model's image bit for bit, in one prompt beside the plain branch; at strength 1 the image moves.
The adapter is a FLAME-55 file in the authors' layout, made for the tiny SD1.5 and removed at the end."""
import io
import uuid

import numpy as np
import pytest

from editlab.client.api import output_files

pytestmark = pytest.mark.e2e
TOKEN = f"exprlive{uuid.uuid4().hex[:8]}"
TINY_SD15_CROSS_ATTENTION = [64, 128, 128, 128, 64, 64, 128]


def N(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


@pytest.fixture(scope="module")
def adapter_file(server):
    import torch

    from editlab.models.expression.adapter import random_adapter

    folder = server.models_dir / "expression_adapters"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TOKEN}_exp_adapter.bin"
    image_proj, ip = random_adapter(55, 32, TINY_SD15_CROSS_ATTENTION, num_tokens=4, seed=1).parts()
    torch.save({"image_proj": image_proj, "ip_adapter": ip}, path)
    yield path.name
    path.unlink()


def _branch(graph, first, model, prefix):
    graph[str(first)] = N("KSampler", model=model, seed=7, steps=4, cfg=3.0, sampler_name="euler",
                          scheduler="normal", positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0)
    graph[str(first + 1)] = N("VAEDecode", samples=[str(first), 0], vae=["1", 2])
    graph[str(first + 2)] = N("SaveImage", images=[str(first + 1), 0], filename_prefix=f"{TOKEN}_{prefix}")


def test_apply_expression_at_strength_zero_is_the_plain_image_bit_for_bit(server, adapter_file):
    from PIL import Image

    graph = {"1": N("EditLabTinyModels", architecture="sd15", seed=0),
             "2": N("CLIPTextEncode", clip=["1", 1], text="a portrait photo of a person"),
             "3": N("CLIPTextEncode", clip=["1", 1], text=""),
             "4": N("EmptyLatentImage", width=64, height=64, batch_size=1),
             "5": N("EditLabExpressionAdapterLoader", adapter_name=adapter_file),
             "6": N("EditLabFLAMEExpression", expression="2, -1.5, 1", eyelid_left=0.3, eyelid_right=0.3,
                    jaw_open=0.3, jaw_yaw=0.0, jaw_roll=0.0)}
    for node, strength in (("7", 0.0), ("8", 1.0)):
        graph[node] = N("EditLabApplyExpression", model=["1", 0], adapter=["5", 0], blendshapes=["6", 0],
                        strength=strength, start_percent=0.0, end_percent=1.0)
    _branch(graph, 10, ["1", 0], "plain")
    _branch(graph, 20, ["7", 0], "strength0")
    _branch(graph, 30, ["8", 0], "strength1")
    entry = server.client.wait(server.client.queue(graph), timeout=600)
    images = {}
    for node, ref in output_files(entry):
        with Image.open(io.BytesIO(server.client.view(ref))) as im:
            images[node] = np.asarray(im.convert("RGB")).copy()
    assert set(images) == {"12", "22", "32"}
    assert np.array_equal(images["22"], images["12"])  # 8-bit PNGs, exactly
    assert not np.array_equal(images["32"], images["12"])  # the same adapter at strength 1 changes the image
