"""Stage 2's mask-weighted loss changes what is learned inside the product mask.

A denoiser with shared capacity (one learned value per channel for every latent cell) cannot fit the product and the
background at once: the weighted squared error is minimised by the weighted mean of the targets,
sum_i w_i t_i / sum_i w_i, with w_i = 1 + (product_weight - 1) * (share of cell i inside the mask). That optimum is
written here by hand (cell cover counted pixel by pixel, not with the code's pooling) and the trained value must land
on it: with product_weight 1 the plain mean, with 20 close to the product's mean, so the error inside the mask falls
and the error outside rises as product_weight grows.
"""
import torch

from editlab.models.layered.train import latent_weights, train_stage

H = W = 16  # mask pixels
LAT = 4  # latent cells per side: each covers a 4 x 4 pixel block


def _mask():
    m = torch.zeros(H, W)
    m[2:11, 5:14] = 1.0  # a product box that covers some cells fully, some partly
    return m


def _target():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(1, 3, LAT, LAT, generator=gen) * 0.2
    inside = _cover(_mask()) > 0.5
    t[:, :, inside] += torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1)  # the product differs from the background
    return t


def _cover(mask):
    """Share of each latent cell covered by the mask, counted over its pixel block."""
    block = H // LAT
    return torch.tensor([[float(mask[i * block:(i + 1) * block, j * block:(j + 1) * block].mean())
                          for j in range(LAT)] for i in range(LAT)])


def _independent_optimum(target, product_weight):
    w = 1.0 + (product_weight - 1.0) * _cover(_mask())
    return (target[0] * w).sum((1, 2)) / w.sum()


def _train(product_weight):
    target = _target()
    weights = latent_weights(_mask(), (LAT, LAT), product_weight)
    torch.testing.assert_close(weights[0, 0], 1.0 + (product_weight - 1.0) * _cover(_mask()))
    value = torch.zeros(1, 3, 1, 1, requires_grad=True)
    pairs = [{"target": target, "weights": weights}]
    stats = train_stage([value], pairs, lambda x, sigma, pair: value.expand_as(x),
                        lambda s, n, x0: s.view(-1, 1, 1, 1) * n + (1 - s.view(-1, 1, 1, 1)) * x0,
                        lambda p: 1.0 - p, steps=600, lr=0.05, seed=0, eval_points=2)
    return value.detach().view(3), target, stats


def _region_errors(value, target):
    inside = _cover(_mask()) > 0.5
    err = (target[0] - value.view(3, 1, 1)).pow(2).mean(0)
    return float(err[inside].mean()), float(err[~inside].mean())


def test_learned_value_is_the_weighted_optimum():
    for product_weight in (1.0, 5.0, 20.0):
        value, target, stats = _train(product_weight)
        torch.testing.assert_close(value, _independent_optimum(target, product_weight), rtol=0, atol=2e-3)
        assert stats["loss_after"] < stats["loss_before"]


def test_product_weight_moves_the_fit_into_the_mask():
    fits = {pw: _region_errors(*_train(pw)[:2]) for pw in (1.0, 20.0)}
    (in1, out1), (in20, out20) = fits[1.0], fits[20.0]
    assert in20 < 0.5 * in1, fits  # the product is learned far better with the weight (1.10 -> 0.42 when written)
    assert out20 > out1, fits  # at the background's expense (shared capacity)
