"""The training helpers shared by the expression adapter and ToVA: residual adds kept differentiable."""
import pytest
import torch

from editlab.models.expression.train import graph_safe_residual_adds


def _block(x):
    h = torch.nn.functional.layer_norm(x, x.shape[-1:])  # saves x for backward
    x += h * 2  # an inference-style residual add, as in Flux's blocks
    return x


def test_tracked_residual_adds_become_differentiable_and_untracked_stay_in_place():
    x0 = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace"):
        _block(x0 * 1).sum().backward()
    with graph_safe_residual_adds():
        y = x0 * 1
        out = _block(y)
        plain = torch.zeros(2)
        alias = plain
        alias += 1  # not tracked: still written in place
    out.sum().backward()
    ref = x0.detach().clone().requires_grad_(True)
    (ref + 2 * torch.nn.functional.layer_norm(ref, (8,))).sum().backward()
    assert torch.allclose(x0.grad, ref.grad) and torch.equal(plain, torch.ones(2))


def test_the_in_place_add_is_restored_even_after_an_error():
    original = torch.Tensor.__iadd__
    with pytest.raises(ValueError):
        with graph_safe_residual_adds():
            raise ValueError("stop")
    assert torch.Tensor.__iadd__ is original
