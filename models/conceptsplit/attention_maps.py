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

from ..patch_layer import KeptInputPatch, block_name, in_sigma_window, layer_text_attention


class AttentionMapRecorder(KeptInputPatch):
    def __init__(self, words: dict, layers: dict, size: tuple[int, int], sigma_window=(float("-inf"), float("inf"))):
        self.words = {w: list(p) for w, p in words.items()}  # word -> conditioning positions
        self.layers = dict(layers)  # "block.id.index" -> attn2
        self.size = tuple(size)  # (H, W) of the latent
        self.sigma_lo, self.sigma_hi = sigma_window
        self.sums = {w: torch.zeros(self.size) for w in self.words}
        self.count = 0
        super().__init__()  # the sums stay on the CPU: nothing moves with the model

    def keep(self, n, context, value, extra):
        if block_name(extra) in self.layers and context is not None and in_sigma_window(extra, self.sigma_hi,
                                                                                         self.sigma_lo):
            return n, context
        return None

    def apply(self, out, kept, extra):
        n, context = kept
        with torch.no_grad():
            found = layer_text_attention(self.layers[block_name(extra)], n, context, extra)
            if found is None:
                return out
            probs, (h, w) = found
            for word, positions in self.words.items():
                cols = [p for p in positions if p < probs.shape[-1]]
                m = probs[:, :, cols].sum(-1).reshape(probs.shape[0], 1, h, w)
                m = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False) if (h, w) != self.size \
                    else m
                self.sums[word] += m.mean(0)[0].cpu()
        self.count += 1
        return out

    def maps(self) -> dict:
        """word -> (H, W) average probability mass on the word's tokens (zeros if nothing was recorded)."""
        return {w: s / max(self.count, 1) for w, s in self.sums.items()}
