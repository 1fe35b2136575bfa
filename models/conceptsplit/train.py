"""Training one concept's value LoRA inside a host UNet or Flux model with the diffusion loss, the network frozen and
left exactly as it was (the shared trainer, ``models/training.py``).

Captions: the authors caption the training images with prompt templates filled with the concept's word (their
training script reads a list of templates, fills each with the word and pairs example e with template e mod P and
image e mod N); :func:`template_examples` lays the examples out that way and :func:`train_tova` gives each example
its own caption (context, pooled vector, and the word's token positions in it). One caption for every image (the
old behaviour) is a single template without a placeholder."""
from __future__ import annotations

import torch

from ..training import train_in_unet
from .flux import FluxToVAPatch, installed
from .patch import ToVAPatch
from .tova import Binding, RowPositions

PLACEHOLDER = "{}"
# Ours, in the style of the authors' templates (their own list, training_scripts/prompt_template.txt, is not in their
# published repository): the word in a short photo caption, several framings.
DEFAULT_TEMPLATES = (
    "a photo of a {}",
    "a close-up photo of a {}",
    "a cropped photo of the {}",
    "a bright photo of a {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a rendering of a {}",
    "a good photo of the {}",
)


def parse_templates(text: str) -> list[str]:
    """The templates of ``text``, one per line (blank lines skipped); each must hold ``{}`` (the word's place)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        raise ValueError("no templates (one per line, each with {} where the word goes)")
    bad = [line for line in lines if PLACEHOLDER not in line]
    if bad:
        raise ValueError(f"every template needs {{}} where the word goes; not: {bad[:3]}")
    return lines


def fill_templates(templates, word: str) -> list[str]:
    """Each template with ``{}`` replaced by ``word``."""
    return [t.replace(PLACEHOLDER, word.strip()) for t in templates]


def template_examples(images: int, templates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, template index) of each training example: max(N, P) examples, example e pairs image e mod N
    with template e mod P (as the authors' dataset pairs them; theirs has P examples, so with N > P some images are
    never drawn: here every image is, at least once)."""
    if images < 1 or templates < 1:
        raise ValueError(f"need at least one image and one template; got {images}, {templates}")
    e = torch.arange(max(images, templates))
    return e % images, e % templates


class _Captions:
    """The captions of one training run: per caption its context (P, T, C), pooled vector (P, D) or None and the
    word's token positions. ``select(indices)`` makes them this batch's: the binding's positions per row, and the
    rows :meth:`context` / :meth:`pooled` hand the trainer's predictor."""

    def __init__(self, binding: Binding, contexts: torch.Tensor, pooled, positions: list):
        self.binding, self.contexts, self.all_pooled, self.positions = binding, contexts, pooled, positions
        self.rows = torch.zeros(1, dtype=torch.long)
        self.seen = []  # caption indices per batch, in order (for logs and tests)

    def select(self, values: torch.Tensor) -> None:
        self.rows = values.reshape(-1).long().to(self.contexts.device)
        self.seen.append(self.rows.tolist())
        self.binding.positions = RowPositions(self.positions[i] for i in self.rows.tolist())

    def context(self) -> torch.Tensor:
        return self.contexts[self.rows]

    def pooled(self):
        return None if self.all_pooled is None else self.all_pooled[self.rows]


def _with_captions(patch_class):
    class Captioned(patch_class):
        """The patch, with the batch's captions chosen when the trainer sets its ``values`` (the caption indices)."""
        captions = None

        @property
        def values(self):
            return self.__dict__.get("_values")

        @values.setter
        def values(self, v):
            self.__dict__["_values"] = v
            if self.captions is not None and v is not None:
                self.captions.select(v)

    return Captioned


def train_tova(base, adapter, layers: dict, context: torch.Tensor, pooled: torch.Tensor | None, positions,
               latents: torch.Tensor, resolution: int, steps: int, lr: float, batch_size: int, seed: int, device,
               on_step=None, should_stop=None, example_images: torch.Tensor | None = None,
               example_captions: torch.Tensor | None = None, gradient_checkpointing: bool = True) -> dict:
    """Train ``adapter`` (bound to ``positions`` of ``context``) inside ``base``, a host BaseModel; ``layers`` are the
    UNet's cross-attention layers by name, or a Flux model's double blocks ("double.<i>": the text stream's values,
    through the same attention override ToVA Apply installs). ``latents`` are in the model's latent space, on
    ``device``.

    One caption per image: ``context`` (P, T, C) and ``pooled`` (P, D) hold P captions, ``positions`` a list of P
    position lists, and example e is image ``example_images[e]`` with caption ``example_captions[e]``
    (:func:`template_examples`). Otherwise ``context`` (1, T, C) is every image's caption."""
    templated = example_images is not None
    binding = Binding(adapter, RowPositions(positions) if templated else positions)
    bindings = [binding]
    options = None
    flux = all(name.startswith("double.") for name in layers)
    patch_class = FluxToVAPatch if flux else ToVAPatch
    if templated:
        patch_class = _with_captions(patch_class)
    patch = patch_class(bindings, layers)
    if flux:
        options = installed({}, patch)  # the override, its post_input hook, the per-forward text length
    if templated:
        captions = _Captions(binding, context, pooled, [list(p) for p in positions])
        patch.captions = captions
        latents = latents[example_images.to(latents.device)]
        values = example_captions.to(device=device, dtype=torch.float32)[:, None]
        context, pooled = captions.context, captions.pooled
    else:
        values = torch.zeros(latents.shape[0], 1, device=device)  # the shared loop sets patch.values; ToVA has none
    stats = train_in_unet(base, adapter, patch, context, pooled, latents, values, resolution, steps, lr, batch_size,
                          seed, device, on_step, should_stop, options,
                          gradient_checkpointing=gradient_checkpointing)
    if templated:
        stats["captions"] = int(captions.contexts.shape[0])
        stats["examples"] = int(latents.shape[0])
        stats["images"] = int(example_images.max()) + 1
    return stats
