"""DiT-VTON in plain numpy/torch on real photos (scikit-image's astronaut and camera): pose, masks, stitching."""
import numpy as np
import pytest
import torch
from skimage import data

from editlab.models.tryon.mask import CATEGORIES, keep_out, region, tryon_mask
from editlab.models.tryon.pose import FACE, L_EYE, L_HIP, L_SHOULDER, R_EYE, R_HIP, R_SHOULDER, estimate_pose, \
    render_pose
from editlab.models.tryon.stitch import stitch, unstitch


def rgb(name):
    image = getattr(data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image


@pytest.fixture(scope="module")
def poses():
    return {name: estimate_pose(rgb(name)) for name in ("astronaut", "camera", "coffee")}


def inside(mask, point):
    x, y = np.round(point).astype(int)
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] > 0


def test_pose_finds_people_and_says_when_there_is_none(poses):
    assert poses["astronaut"].found and poses["camera"].found
    assert not poses["coffee"].found
    a = poses["astronaut"]
    assert a.landmarks.shape == (33, 4) and a.size == (512, 512)
    assert a.point(L_SHOULDER)[1] > a.point(L_EYE)[1]  # shoulders below the eyes, in pixels
    render = render_pose(a)
    assert render.shape == (512, 512, 3) and render.any()
    assert not render_pose(poses["coffee"]).any()


def test_pose_is_deterministic():
    a, b = estimate_pose(rgb("astronaut")), estimate_pose(rgb("astronaut"))
    assert np.array_equal(a.landmarks, b.landmarks)


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_upper_mask_covers_torso_and_no_face_landmark(poses, name):
    pose = poses[name]
    mask = tryon_mask(pose, "upper", grow=4, feather=6)
    covering = tryon_mask(pose, "upper", grow=4, feather=6, keep_hands=False)  # hands are kept out by default
    h, w = pose.size
    core = [pose.point(i) for i in (L_SHOULDER, R_SHOULDER, R_HIP, L_HIP)]
    centre = np.mean(core, 0)
    for t in np.linspace(0, 0.9, 6):  # points from the torso centre towards each corner, inside the image
        for corner in core:
            pt = centre + t * (corner - centre)
            if 0 <= pt[0] < w and 0 <= pt[1] < h:
                assert inside(covering, pt), (name, pt)
    for i in FACE:
        if pose.landmarks[i, 3] > 0.5:
            assert not inside(mask, pose.point(i)), f"face landmark {i} is masked"
    assert 0.0 <= mask.min() and mask.max() == 1.0


def test_hat_covers_above_the_eyes_only(poses):
    pose = poses["astronaut"]
    mask = tryon_mask(pose, "hat")
    eye_y = min(pose.point(L_EYE)[1], pose.point(R_EYE)[1])
    ys, xs = np.nonzero(mask)
    assert ys.size and ys.max() <= eye_y + 1
    assert inside(mask, [pose.point(0)[0], eye_y - 20])  # just above the eyes, over the nose


def test_masks_are_deterministic_and_feather_only_inward(poses):
    pose = poses["camera"]
    for category in CATEGORIES:
        a = tryon_mask(pose, category, grow=3, feather=8)
        assert np.array_equal(a, tryon_mask(pose, category, grow=3, feather=8))
        hard = tryon_mask(pose, category, grow=3, feather=0)
        assert np.all(a[hard == 0] == 0), category
    assert not tryon_mask(pose, "custom").any()
    assert not tryon_mask(poses["coffee"], "upper").any()


def test_keep_out_can_be_lifted(poses):
    pose = poses["astronaut"]
    assert keep_out(pose).any() and not keep_out(pose, keep_face=False, keep_hands=False).any()
    with pytest.raises(ValueError, match="category must be one of"):
        region(pose, "sock")


def _person():
    return torch.from_numpy(rgb("astronaut")).float()[None] / 255


def test_stitch_then_unstitch_with_identity_generator_is_exact(poses):
    person = _person()
    mask = torch.from_numpy(tryon_mask(poses["astronaut"], "upper", feather=6))
    product = torch.rand(1, 300, 200, 3, generator=torch.Generator().manual_seed(0))
    pose = torch.from_numpy(render_pose(poses["astronaut"])).float()[None] / 255
    for layout, extra in (("side_by_side", None), ("triptych_with_pose", pose)):
        canvas, canvas_mask, info = stitch(person, mask, [product, product], extra, layout, height=512)
        assert canvas.shape[1] % 16 == 0 and canvas.shape[2] % 16 == 0
        assert canvas_mask[:, :, info.person_box[2]:].max() == 0  # only the person panel is to be filled
        assert len(info.product_boxes) == 2
        out = unstitch(canvas, info, person, mask)
        assert torch.equal(out[0][mask == 0], person[0][mask == 0])  # outside the mask: the input, bit for bit
        noise = torch.rand_like(canvas)  # any "generator": outside stays exact, inside changes
        out = unstitch(noise, info, person, mask)
        assert torch.equal(out[0][mask == 0], person[0][mask == 0])
        assert not torch.equal(out[0][mask > 0], person[0][mask > 0])


@pytest.mark.parametrize("size, message", [((1, 1), "between 8 and 8192"), ((10000, 40), "between 8 and 8192")])
def test_product_sizes_are_checked(poses, size, message):
    mask = torch.from_numpy(tryon_mask(poses["astronaut"], "upper"))
    with pytest.raises(ValueError, match=message):
        stitch(_person(), mask, [torch.rand(1, *size, 3)])


def test_empty_full_mask_and_batches_are_checked():
    person = _person()
    with pytest.raises(ValueError, match="the mask is empty"):
        stitch(person, torch.zeros(512, 512), [torch.rand(1, 64, 64, 3)])
    with pytest.raises(ValueError, match="covers the whole person image"):
        stitch(person, torch.ones(512, 512), [torch.rand(1, 64, 64, 3)])
    mask = torch.zeros(512, 512)
    mask[100:200, 100:200] = 1
    with pytest.raises(ValueError, match="product has a batch of 3; the person batch is 2") as caught:
        stitch(person.expand(2, -1, -1, -1), mask, [torch.rand(3, 64, 64, 3)])
    assert caught.value.input_name == "product"  # the node input at fault, not the mask


@pytest.mark.parametrize("layout", ["side_by_side", "triptych_with_pose"])
def test_unstitched_person_panel_lines_up_pixel_for_pixel(layout):
    """A marker planted in the generated canvas's person panel comes back where it was planted: at a panel size that
    needs no resampling, every masked pixel is the planted one, bit for bit; at odd sizes the marker's centre lands
    within a pixel of where it was planted."""
    gen = torch.Generator().manual_seed(0)

    def run(h, w, height):
        person = torch.rand(1, h, w, 3, generator=gen)
        mask = torch.zeros(1, h, w)
        mask[:, 2:-2, 2:-2] = 1
        product, pose = torch.rand(1, 40, 30, 3, generator=gen), torch.rand(1, h, w, 3, generator=gen)
        canvas, _, info = stitch(person, mask, [product], pose if layout != "side_by_side" else None, layout, height)
        planted = torch.zeros(1, h, w, 3)
        y, x = int(h * 0.3), int(w * 0.6)
        planted[:, y:y + 12, x:x + 12] = 1.0
        x0, y0, x1, y1 = info.person_box
        generated = canvas.clone()
        generated[:, y0:y1, x0:x1] = torch.nn.functional.interpolate(
            planted.movedim(-1, 1), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False).movedim(1, -1)
        out = unstitch(generated, info, person, mask)
        return out, planted, mask, (y + 5.5, x + 5.5)

    out, planted, mask, _ = run(256, 160, 256)  # the person panel is the person's own size: no resampling
    inside = mask[0] > 0
    assert torch.equal(out[0][inside], planted[0][inside])
    out, planted, mask, (cy, cx) = run(203, 131, 256)  # odd sizes: resampled both ways
    weight = out[0, ..., 0] * (mask[0] > 0)
    ys, xs = torch.meshgrid(torch.arange(203.0), torch.arange(131.0), indexing="ij")
    hot = weight > 0.5
    assert hot.any()
    assert abs(float(ys[hot].mean()) - cy) < 1.0 and abs(float(xs[hot].mean()) - cx) < 1.0
