"""ChronoEdit as plain torch: the latent layout of an edit as a short video (input image at frame 0, the edit last),
its size from a target area, and temporal reasoning that drops the reasoning frames at step k and restarts the
host's sampler on the kept frames (any sampler, multistep and SDE ones included)."""
from .layout import (AUTHORS_AREA, AUTHORS_FRAMES, DEFAULT_REASONING_FRAMES, EDIT_POSITION_2_FRAMES, MAX_LATENT_FRAMES,
                     conditioning_video, frame0_mask, keep_ends, kept_positions, rope_scale_for, size_for_area,
                     start_latent, video_frames)
from .reasoning import ReasoningResult, check_reasoning_steps, restart_state, temporal_reasoning

__all__ = ["AUTHORS_AREA", "AUTHORS_FRAMES", "DEFAULT_REASONING_FRAMES", "EDIT_POSITION_2_FRAMES", "MAX_LATENT_FRAMES",
           "conditioning_video", "frame0_mask", "keep_ends", "kept_positions", "rope_scale_for", "size_for_area",
           "start_latent", "video_frames", "ReasoningResult", "check_reasoning_steps", "restart_state",
           "temporal_reasoning"]
