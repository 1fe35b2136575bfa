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

from ..patch_layer import KeptInputPatch, block_name, cond_rows, text_attention  # noqa: F401


class AttentionMapRecorder(KeptInputPatch):
    def __init__(self, words: dict, layers: dict, size: tuple[int, int], sigma_window=(float("-inf"), float("inf"))):
        self.words = {w: list(p) for w, p in words.items()}  # word -> conditioning positions
        self.layers = dict(layers)  # "block.id.index" -> attn2
        self.size = tuple(size)  # (H, W) of the latent
        self.sigma_lo, self.sigma_hi = sigma_window
        self.sums = {w: torch.zeros(self.size) for w in self.words}
        self.count = 0
        super().__init__()  # the sums stay on the CPU: nothing moves with the model

    def _active(self, extra) -> bool:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_lo - 1e-6 <= sigma <= self.sigma_hi + 1e-6

    def keep(self, n, context, value, extra):
        if block_name(extra) in self.layers and context is not None and self._active(extra):
            return n, context
        return None

    def apply(self, out, kept, extra):
        shape = extra.get("activations_shape")
        if shape is None:
            return out
        n, context = kept
        attn = self.layers[block_name(extra)]
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
