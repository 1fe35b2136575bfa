"""Heat-map rendering shared by the methods that show a map (ConceptSplit's attention maps, the layered edit's
consistency report): values in [0, 1] to RGB on one fixed colour ramp."""
from __future__ import annotations

import torch

_STOPS = torch.tensor([[0.0, 0.0, 0.0], [0.35, 0.0, 0.55], [0.85, 0.2, 0.25], [1.0, 0.65, 0.0], [1.0, 1.0, 0.85]])


def heatmap(m: torch.Tensor) -> torch.Tensor:
    """(H, W) values in [0, 1] -> (H, W, 3) RGB (black, purple, red, orange, pale yellow)."""
    x = m.clamp(0, 1) * (len(_STOPS) - 1)
    lo = x.floor().long().clamp(max=len(_STOPS) - 2)
    t = (x - lo)[..., None]
    return _STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t


def normalised(m: torch.Tensor) -> torch.Tensor:
    """``m`` scaled to [0, 1] by its maximum (all zeros stay zeros)."""
    top = float(m.max())
    return m / top if top > 0 else m.clone()
