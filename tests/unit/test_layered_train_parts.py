"""The training stages' plain-torch parts: the pair folder's layout and what it skips, stage 2's per-cell weights
(the product's cells product_weight times the rest), the weighted loss by hand, and the loop lowering a loss."""
import numpy as np
import pytest
import torch
from PIL import Image

from editlab.models.layered import LayeredInputError
from editlab.models.layered.data import load_square, read_pairs
from editlab.models.layered.train import latent_weights, train_stage, weighted_mse


def _png(path, value=128, size=(24, 16), mode="RGB"):
    Image.fromarray(np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), value, np.uint8)).save(path)


def test_read_pairs_layout_and_skips(tmp_path):
    for n in ("b", "a"):
        _png(tmp_path / f"{n}_source.png")
        _png(tmp_path / f"{n}_target.jpg")
        (tmp_path / f"{n}.txt").write_text(f"  edit\n{n}  ")
    _png(tmp_path / "a_mask.png", 255, mode="L")
    _png(tmp_path / "c_source.png")  # no target
    _png(tmp_path / "d_source.png")
    _png(tmp_path / "d_target.png")  # no instruction
    (tmp_path / "notes.txt").write_text("not a pair")
    pairs, skipped = read_pairs(str(tmp_path))
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].instruction == "edit a" and pairs[0].mask.endswith("a_mask.png") and pairs[1].mask is None
    assert pairs[1].target.endswith("b_target.jpg")
    assert any(s.startswith("c:") and "target" in s for s in skipped)
    assert any(s.startswith("d:") and "instruction" in s for s in skipped)
    assert read_pairs(str(tmp_path), inside=lambda p: "b_" not in p)[0][0].name == "a"


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(LayeredInputError, match="NAME_source.png") as info:
        read_pairs(str(tmp_path))
    assert info.value.input_name == "folder"


def test_load_square_crops_the_centre(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # the centre square is white
    Image.fromarray(img).save(tmp_path / "x.png")
    out = load_square(str(tmp_path / "x.png"), 8)
    assert out.shape == (8, 8, 3) and float(out.min()) > 0.99
    _png(tmp_path / "tiny.png", size=(4, 4))
    with pytest.raises(ValueError):
        load_square(str(tmp_path / "tiny.png"), 8)


def test_stage2_weights_and_loss_by_hand():
    mask = torch.zeros(16, 16)
    mask[:8, :8] = 1  # the top-left latent cells (2x2 grid of 8 px cells... on a 4x4 latent: the top-left 2x2)
    w = latent_weights(mask, (4, 4), 5.0)
    expected = torch.ones(4, 4)
    expected[:2, :2] = 5.0
    assert torch.equal(w[0, 0], expected)
    assert torch.equal(latent_weights(None, (4, 4), 5.0), torch.ones(1, 1, 4, 4))
    assert torch.equal(latent_weights(mask, (4, 4), 1.0), torch.ones(1, 1, 4, 4))
    pred, target = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    pred[0, :, 0, 0] = 1.0  # error 1 in a product cell
    pred[0, :, 3, 3] = 1.0  # error 1 in a background cell
    total = expected.sum()
    assert float(weighted_mse(pred, target, w)) == pytest.approx((5.0 + 1.0) / float(total))


def test_train_stage_lowers_a_loss():
    torch.manual_seed(0)
    target = torch.randn(1, 2, 4, 4)
    p = torch.nn.Parameter(torch.zeros(1, 2, 4, 4))
    pairs = [{"target": target, "weights": torch.ones(1, 1, 4, 4)}]
    steps = []
    stats = train_stage([p], pairs, lambda x, s, pair: p.expand_as(x), lambda s, n, x0: s.view(-1, 1, 1, 1) * n +
                        (1 - s.view(-1, 1, 1, 1)) * x0, lambda q: 1 - q, 50, 0.1, 0,
                        on_step=lambda i, n, loss: steps.append(i))
    assert stats["loss_after"] < 0.1 * stats["loss_before"] and steps == list(range(1, 51))
