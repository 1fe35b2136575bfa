"""Training crops are squares around the face found by the face landmarker, on real photos: the crop holds the
whole face box, is square in the source photo (so the resize scales both sides alike), and the face found again in
the crop has the shape it has in the photo (nothing squashed)."""
import os

import matplotlib
import numpy as np
import pytest
from PIL import Image
from skimage import data

from editlab.models.expression.blendshapes import FaceEncoder, landmarker_path
from editlab.models.expression.dataset import face_crop, face_training_set

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def encoder():
    with FaceEncoder(landmarker_path()) as enc:
        yield enc


def _rgb(path):
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def photos():
    astronaut = data.astronaut()
    wide = np.zeros((512, 1100, 3), np.uint8)  # a wide photo, the face far off its centre
    wide[:, 500:1012] = astronaut
    lfw = (np.stack([data.lfw_subset()[0]] * 3, -1) * 255).astype(np.uint8)  # a 25x25 aligned face, enlarged
    return {"editlab_photo": _rgb(os.path.join(REPO, "workflows", "input", "editlab_photo.png")),
            "astronaut": astronaut,
            "grace_hopper": _rgb(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")),
            "wide": wide, "edge": np.ascontiguousarray(astronaut[60:, 170:]),  # the face at the top-left corner
            "lfw": np.asarray(Image.fromarray(lfw).resize((100, 100), Image.BICUBIC))}


def _aspect(box):
    return (box[2] - box[0]) / (box[3] - box[1])


@pytest.mark.parametrize("name", list(photos()))
def test_the_crop_holds_the_face_box_and_keeps_its_shape(encoder, name):
    image = photos()[name]
    faces = encoder.faces(image)
    assert faces, name
    crop, face, where = face_crop(image, faces, 256)
    assert crop.shape == (256, 256, 3)
    x0, y0, x1, y1 = face.box
    assert where.x0 <= x0 and where.y0 <= y0 and where.x0 + where.side >= x1 and where.y0 + where.side >= y1
    assert where.side >= 1.5 * max(x1 - x0, y1 - y0) or where.side >= min(image.shape[:2])  # a margin round it
    h, w = image.shape[:2]
    if 0 <= where.x0 and 0 <= where.y0 and where.x0 + where.side <= w and where.y0 + where.side <= h:
        # inside the photo: exactly that square of it, scaled by one factor on both axes
        square = Image.fromarray(image).crop((where.x0, where.y0, where.x0 + where.side, where.y0 + where.side))
        assert np.array_equal(crop, np.asarray(square.resize((256, 256), Image.LANCZOS)))
    again = encoder.faces(crop)
    assert len(again) == 1, name
    assert abs(_aspect(again[0].box) / _aspect(face.box) - 1) < 0.1, (name, again[0].box, face.box)


def test_photos_without_a_face_are_skipped_and_listed_and_unreadable_ones_named(encoder, tmp_path):
    all_photos = photos()
    Image.fromarray(all_photos["wide"]).save(tmp_path / "a_wide.png")
    Image.fromarray(data.coffee()).save(tmp_path / "b_coffee.png")
    (tmp_path / "c_broken.png").write_bytes(b"not a png")

    def read(path):
        try:
            return _rgb(path)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(type(exc).__name__) from None

    names = ["a_wide.png", "b_coffee.png", "c_broken.png"]
    found = face_training_set([(n, str(tmp_path / n)) for n in names], encoder, 64, read)
    assert found.names == ["a_wide.png"] and found.skipped == ["b_coffee.png"]
    assert found.unreadable == ["c_broken.png: UnidentifiedImageError"]
    assert found.images[0].shape == (64, 64, 3) and found.values[0].shape == (52,)
    assert found.crops[0].x0 >= 500  # the face's square, not the whole wide photo
