"""Per-word cross-attention maps of a UNet, recorded during sampling (ConceptSplit's inspection tool).

At each cross-attention layer the probabilities over the text keys, ``softmax(q k^T / sqrt(d))`` averaged over heads,
are (B, N, T): N image positions of that layer (h x w, from the host's ``activations_shape``), T text tokens. A
word's map is the sum of its tokens' columns; the maps of all T tokens sum to 1 at every position. Each layer's map is
resized (bilinear) to the latent's size and averaged over the layers and model calls inside a sigma window, over the
conditional rows only. Plain torch; the recorder is a pair of list-style attn2 patches that return what they get.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..expression.patch import Hook
from .patch import cond_rows


def text_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, T) attention probabilities over the text keys, averaged over heads (float32)."""
    b, n, inner = q.shape
    d = inner // heads
    split = lambda t: t.float().reshape(b, -1, heads, d).transpose(1, 2)
    logits = split(q) @ split(k).transpose(-1, -2) / d ** 0.5
    return logits.softmax(-1).mean(1)


class AttentionMapRecorder:
    def __init__(self, words: dict, layers: dict, size: tuple[int, int], sigma_window=(float("-inf"), float("inf"))):
        self.words = {w: list(p) for w, p in words.items()}  # word -> conditioning positions
        self.layers = dict(layers)  # "block.id.index" -> attn2
        self.size = tuple(size)  # (H, W) of the latent
        self.sigma_lo, self.sigma_hi = sigma_window
        self.sums = {w: torch.zeros(self.size) for w in self.words}
        self.count = 0
        self._inputs = {}
        self.input_hook = Hook(self.before_attention, self, report_models=False)
        self.output_hook = Hook(self.after_attention, self, report_models=False)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self  # the sums stay on the CPU

    @staticmethod
    def _name(extra):
        block = extra.get("block")
        return None if block is None else f"{block[0]}.{block[1]}.{extra.get('block_index', 0)}"

    def _active(self, extra) -> bool:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_lo - 1e-6 <= sigma <= self.sigma_hi + 1e-6

    def before_attention(self, n, context, value, extra):
        name = self._name(extra)
        if name in self.layers and context is not None and self._active(extra):
            self._inputs[name] = (n, context)
        return n, context, value

    def after_attention(self, out, extra):
        stashed = self._inputs.pop(self._name(extra), None)
        shape = extra.get("activations_shape")
        if stashed is None or shape is None:
            return out
        n, context = stashed
        attn = self.layers[self._name(extra)]
        rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
        if not rows:
            return out
        with torch.no_grad():
            probs = text_attention(attn.to_q(n[rows]), attn.to_k(context[rows]), extra["n_heads"])
            h, w = int(shape[-2]), int(shape[-1])
            for word, positions in self.words.items():
                cols = [p for p in positions if p < probs.shape[-1]]
                m = probs[:, :, cols].sum(-1).reshape(len(rows), 1, h, w)
                m = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False) if (h, w) != self.size \
                    else m
                self.sums[word] += m.mean(0)[0].cpu()
        self.count += 1
        return out

    def maps(self) -> dict:
        """word -> (H, W) average probability mass on the word's tokens (zeros if nothing was recorded)."""
        return {w: s / max(self.count, 1) for w, s in self.sums.items()}


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
