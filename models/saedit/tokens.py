"""Where a prompt's tokens sit in a ComfyUI conditioning tensor, for each text-encoder part.

Works on a duck-typed CLIP object (``tokenize(text, return_word_ids=True)`` and ``encode_from_tokens``), so it
needs no ComfyUI import. Layouts, as ComfyUI builds them:
- Flux: the conditioning is the T5 tokens only (offset 0).
- SD3/SD3.5: the CLIP-L+G tokens (77 per chunk of the prompt: 77 x k for a prompt longer than one chunk; padded to
  4096 wide), then the T5 tokens when T5 is loaded: T5 starts after the CLIP tokens, at 77 x k.
- SD1.5 / SDXL: CLIP tokens only (SDXL concatenates L and G along the width).
- Wan: UMT5 tokens only.
ComfyUI's word ids count weighted segments, not words, so a word is found by its token ids instead: the word is
tokenised alone and its content tokens are matched as a contiguous run in the prompt's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

T5_KEYS = ("t5xxl", "umt5xxl")
CLIP_KEYS = ("l", "g")
SD3_CLIP_TOKENS = 77
PARTS = ("auto", "t5", "clip")


@dataclass
class PromptTokens:
    embeddings: torch.Tensor | None  # (1, T, D): the conditioning tensor of the prompt (None: layout only)
    key: str  # tokenizer key of the part ("t5xxl", "l", ...)
    offset: int  # index in the conditioning of the part's first token
    ids: list[int]  # the part's token ids, chunks flattened
    content: list[int]  # conditioning positions of real (non-special, non-padding) tokens

    @property
    def part(self) -> str:
        """"t5" or "clip": the part resolved for this encoder (what an SAE trained on these tokens stores)."""
        return "t5" if self.key in T5_KEYS else "clip"


def _flatten(chunks):
    return [tok for chunk in chunks for tok in chunk]


_ENCODER_ATTRS = {"l": "clip_l", "g": "clip_g", "t5xxl": "t5xxl"}


def loaded_encoders(clip) -> set | None:
    """Which of CLIP-L, CLIP-G and T5 the CLIP object actually loaded (an SD3 encoder may lack any of them);
    None when the object does not say."""
    model = getattr(clip, "cond_stage_model", None)
    if model is None or not any(hasattr(model, a) for a in _ENCODER_ATTRS.values()):
        return None
    return {k for k, a in _ENCODER_ATTRS.items() if getattr(model, a, None) is not None}


def sd3_clip_length(tokens: dict, loaded: set | None = None) -> int:
    """How many CLIP tokens an SD3 conditioning starts with: 77 per chunk of the prompt; with both CLIP-L and CLIP-G
    the host keeps the shorter of the two (it cuts both to the same length before joining them side by side)."""
    lengths = [sum(len(chunk) for chunk in tokens[k]) for k in CLIP_KEYS
               if k in tokens and (loaded is None or k in loaded)]
    return min(lengths) if lengths else 0


def resolve_part(token_keys, cond_len: int, part: str, loaded: set | None = None,
                 clip_len: int = SD3_CLIP_TOKENS) -> tuple[str, int]:
    """(tokenizer key, offset in the conditioning) of ``part`` for this encoder and conditioning.

    ``loaded`` (from :func:`loaded_encoders`) settles which SD3 encoders are present; without it the conditioning's
    length decides, which cannot tell T5-only from CLIP-only SD3 (both 77 tokens for short prompts). ``clip_len``:
    the SD3 conditioning's CLIP tokens (:func:`sd3_clip_length`), where T5's tokens start."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    t5 = next((k for k in T5_KEYS if k in token_keys), None)
    sd3_like = t5 is not None and "g" in token_keys
    flux_like = t5 is not None and not sd3_like
    if sd3_like and loaded is not None:
        sd3_clip = bool(loaded & {"l", "g"})
        t5_present = "t5xxl" in loaded
        has_clip = sd3_clip
    else:
        sd3_clip = True
        has_clip = any(k in token_keys for k in CLIP_KEYS)
        t5_present = t5 is not None and (not sd3_like or cond_len > clip_len)
    if part == "auto":
        part = "t5" if t5_present else "clip"
    if part == "t5":
        if not t5_present:
            raise ValueError("this conditioning has no T5 tokens (an SD3 encoder loaded without T5?); use part 'clip'")
        return t5, clip_len if sd3_like and sd3_clip else 0
    if not has_clip or flux_like:
        raise ValueError("this conditioning carries no CLIP tokens (Flux and Wan condition on T5 only); use part 't5'")
    if loaded is not None and sd3_like:
        return ("l" if "l" in loaded else "g"), 0
    return ("l" if "l" in token_keys else "g"), 0


def _layout(clip, tokens: dict, cond_len: int, part: str, embeddings=None) -> PromptTokens:
    loaded = loaded_encoders(clip)
    key, offset = resolve_part(tokens.keys(), cond_len, part, loaded, sd3_clip_length(tokens, loaded))
    flat = _flatten(tokens[key])
    content = [offset + i for i, (_, _, word) in enumerate(flat) if word > 0]
    if offset + len(flat) > cond_len:
        raise ValueError(f"the {key} tokens ({len(flat)}) do not fit the conditioning ({cond_len} tokens)")
    return PromptTokens(embeddings, key, offset, [t for t, _, _ in flat], content)


def prompt_tokens(clip, text: str, part: str = "auto") -> PromptTokens:
    """The prompt's layout and its conditioning tensor (runs the text encoder)."""
    tokens = clip.tokenize(text, return_word_ids=True)
    plain = {k: [[(t, w) for t, w, _ in chunk] for chunk in v] for k, v in tokens.items()}
    cond, _ = clip.encode_from_tokens(plain, return_pooled=True)
    return _layout(clip, tokens, cond.shape[1], part, cond)


def token_layout(clip, text: str, cond_len: int, part: str = "auto") -> PromptTokens:
    """The prompt's layout in a conditioning of ``cond_len`` tokens that was encoded from it, from the tokenizer
    alone (the text encoder does not run; ``embeddings`` is None)."""
    return _layout(clip, clip.tokenize(text, return_word_ids=True), cond_len, part)


def word_positions(clip, prompt: PromptTokens, word: str) -> list[int]:
    """Conditioning positions of every occurrence of ``word`` (one or more words) in the prompt."""
    if not word.strip():
        raise ValueError("the word to edit is empty")
    alone = _flatten(clip.tokenize(word.strip(), return_word_ids=True)[prompt.key])
    target = [t for t, _, w in alone if w > 0]
    hits = []
    content = set(prompt.content)
    for start in range(len(prompt.ids) - len(target) + 1):
        if prompt.ids[start:start + len(target)] == target and prompt.offset + start in content:
            hits.extend(prompt.offset + start + j for j in range(len(target)))
    if not target or not hits:
        raise ValueError(f"'{word.strip()}' is not a word of the prompt")
    return hits


def content_embeddings(clip, texts: list[str], part: str = "auto", should_stop=None) -> tuple[list, str]:
    """(per prompt, the (T, D) embeddings of its real tokens in the chosen part; the part they are, "t5" or
    "clip"). ``should_stop()`` is called before each prompt (it raises to stop a long run)."""
    out, resolved = [], ""
    for text in texts:
        if should_stop is not None:
            should_stop()
        p = prompt_tokens(clip, text, part)
        out.append(p.embeddings[0, p.content].float())
        resolved = p.part
    return out, resolved


_TOKENIZER_ATTRS = {"l": "clip_l", "g": "clip_g", "t5xxl": "t5xxl", "umt5xxl": "umt5xxl"}


def token_texts(clip, prompt: PromptTokens) -> list[str]:
    """Readable text of the prompt's real tokens (falls back to ids where a tokenizer cannot say)."""
    sub = getattr(getattr(clip, "tokenizer", None), _TOKENIZER_ATTRS.get(prompt.key, ""), None)
    hf = getattr(sub, "tokenizer", None)
    ids = [prompt.ids[p - prompt.offset] for p in prompt.content]
    try:
        return [t.replace("</w>", "").replace("\u2581", " ").strip() or "_" for t in hf.convert_ids_to_tokens(ids)]
    except Exception:  # noqa: BLE001 - a sentencepiece wrapper without that method: show ids
        return [f"#{i}" for i in ids]
