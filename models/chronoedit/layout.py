"""ChronoEdit's latent layout: an edit as a short video whose first frame is the input image and whose last is the edit.

Units and layouts (the host's): IMAGE (B, H, W, C) floats in [0, 1]; Wan 2.1 video latents (B, 16, T, H/8, W/8),
T latent frames making 4(T-1)+1 video frames (the first latent frame is one video frame, each later one four).

- Size: the authors scale the input to a target pixel area keeping its aspect ratio, each side rounded down to a
  multiple of 16 (the VAE's 8 times the transformer's 2x2 patch); :func:`size_for_area`.
- The conditioning video is the input image followed by mid-grey frames (zeros in the model's [-1, 1] pixel range),
  encoded by the VAE; its mask marks latent frame 0 as known (:func:`conditioning_video`, :func:`frame0_mask`).
- The LATENT starts as the input's latent at frame 0 and zeros after, with a noise mask that keeps frame 0 at the
  input's latent (the host's inpainting blend: the model always sees frame 0 as the input noised to the current
  sigma, and every denoised estimate has the input's latent there).
- Temporal positions (RoPE): with reasoning, T frames sit at 0..T-1; without, the two frames sit at 0 and 7 (the
  authors' 2-frame mode; ComfyUI's template applies ScaleROPE scale_t 7). When reasoning frames are dropped the kept
  frames keep their positions: 0 and T-1 (:func:`kept_positions`, :func:`rope_scale_for`).
"""
from __future__ import annotations

import math

import torch

SIDE_MULTIPLE = 16
TIME_RATIO = 4  # video frames per latent frame after the first (Wan 2.1 VAE)
EDIT_POSITION_2_FRAMES = 7  # temporal RoPE position of the edited frame in the authors' 2-frame mode
DEFAULT_REASONING_FRAMES = 8  # latent frames with reasoning (29 video frames), the authors' default
AUTHORS_FRAMES = (2, 8)  # the latent frame counts the authors' temporal positions are defined for (2: 0 and 7; 8: 0..7)
MAX_LATENT_FRAMES = 21  # 81 video frames: the longest clip Wan 2.1 was trained on
AUTHORS_AREA = 720 * 1280  # the authors' target area (720p)


def size_for_area(width: int, height: int, area: int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(width, height) of about ``area`` pixels with the aspect ratio of ``width`` x ``height``, each side rounded
    as the authors do (to the nearest pixel, then down to a multiple of ``multiple``), at least ``multiple``."""
    if width < 1 or height < 1 or area < 1:
        raise ValueError(f"sizes must be positive; got {width}x{height}, area {area}")
    aspect = height / width
    h = round(math.sqrt(area * aspect)) // multiple * multiple
    w = round(math.sqrt(area / aspect)) // multiple * multiple
    return max(w, multiple), max(h, multiple)


def video_frames(latent_frames: int) -> int:
    """Video frames that make ``latent_frames`` latent frames (4(T-1)+1)."""
    return TIME_RATIO * (int(latent_frames) - 1) + 1


def conditioning_video(image: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """The video the VAE encodes for the concat conditioning: ``image`` (1, H, W, 3) as frame 0, mid-grey after.
    Returns (4(T-1)+1, H, W, 3)."""
    frames = video_frames(latent_frames)
    video = torch.full((frames, *image.shape[1:3], 3), 0.5, dtype=image.dtype, device=image.device)
    video[:1] = image[:1, :, :, :3]
    return video


def frame0_mask(latent_frames: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, T, h, w): 0 on latent frame 0 (known), 1 on the frames to generate. The same convention serves the
    concat mask (the host's Wan code turns it into 1 - mask) and the LATENT's noise mask (1 = denoise)."""
    mask = torch.ones((1, 1, latent_frames, height, width), device=device, dtype=dtype)
    mask[:, :, :1] = 0.0
    return mask


def start_latent(input_latent: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """(B, C, T, h, w): the input's latent (its frame 0) at frame 0, zeros after."""
    b, c, _, h, w = input_latent.shape
    out = torch.zeros((b, c, latent_frames, h, w), dtype=input_latent.dtype, device=input_latent.device)
    out[:, :, :1] = input_latent[:, :, :1]
    return out


def kept_positions(latent_frames: int) -> tuple[float, float]:
    """Temporal positions of the first and last frame: (0, 7) for the 2-frame layout, else (0, T-1)."""
    if latent_frames < 2:
        raise ValueError(f"a ChronoEdit latent has at least 2 frames; got {latent_frames}")
    return 0.0, float(EDIT_POSITION_2_FRAMES if latent_frames == 2 else latent_frames - 1)


def rope_scale_for(frames_now: int, last_position: float) -> float:
    """The host's RoPE ``scale_t`` that spreads ``frames_now`` frames from position 0 to ``last_position``
    (positions are linspace(shift, shift + (T-1) * scale, T) in ComfyUI's Wan code)."""
    return 1.0 if frames_now < 2 else float(last_position) / (frames_now - 1)


def keep_ends(tensor: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Frames [0, -1] of ``tensor`` along ``dim`` (a copy)."""
    if tensor.shape[dim] < 2:
        raise ValueError(f"need at least 2 frames along dim {dim}; got shape {tuple(tensor.shape)}")
    return torch.index_select(tensor, dim, torch.tensor([0, tensor.shape[dim] - 1], device=tensor.device))
