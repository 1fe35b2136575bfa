"""ChronoEdit's layout and drop-and-restart plan as plain torch (no ComfyUI): sizes by the authors' rule, temporal
positions, and what each sampling run is given, checked with a recording fake sampler."""
import math

import pytest
import torch

from editlab.models.chronoedit import (conditioning_video, frame0_mask, keep_ends, kept_positions, restart_state,
                                       rope_scale_for, size_for_area, start_latent, temporal_reasoning, video_frames)


@pytest.mark.parametrize("w,h,area,expected", [
    (1024, 1024, 720 * 1280, (960, 960)),  # sqrt(921600) = 960 exactly
    (1280, 720, 720 * 1280, (1280, 720)),
    (500, 300, 160 * 96, (160, 96)),
    (640, 480, 64 * 48, (64, 48)),
])
def test_size_for_area_follows_the_authors_rule(w, h, area, expected):
    # the rule written out by hand: nearest pixel, then down to a multiple of 16
    ref = (round(math.sqrt(area * w / h)) // 16 * 16, round(math.sqrt(area * h / w)) // 16 * 16)
    assert size_for_area(w, h, area) == ref == expected


def test_sizes_are_multiples_of_16_and_never_zero():
    for w, h, area in [(17, 3000, 256), (3000, 17, 256), (33, 33, 1)]:
        sw, sh = size_for_area(w, h, area)
        assert sw % 16 == 0 and sh % 16 == 0 and sw >= 16 and sh >= 16


def test_video_layout():
    assert [video_frames(t) for t in (2, 8, 21)] == [5, 29, 81]
    image = torch.rand(1, 32, 48, 3)
    video = conditioning_video(image, 8)
    assert video.shape == (29, 32, 48, 3) and torch.equal(video[0], image[0]) and video[1:].eq(0.5).all()
    mask = frame0_mask(8, 4, 6)
    assert mask.shape == (1, 1, 8, 4, 6) and mask[:, :, 0].eq(0).all() and mask[:, :, 1:].eq(1).all()
    lat = torch.randn(1, 16, 8, 4, 6)
    s = start_latent(lat, 8)
    assert torch.equal(s[:, :, 0], lat[:, :, 0]) and not s[:, :, 1:].any()


def test_temporal_positions():
    assert kept_positions(2) == (0.0, 7.0) and kept_positions(8) == (0.0, 7.0) and kept_positions(12) == (0.0, 11.0)
    # positions are linspace(0, (T-1) * scale, T): 2 frames at 0 and 7, 8 frames at 0..7
    assert rope_scale_for(2, 7.0) == 7.0 and rope_scale_for(8, 7.0) == 1.0 and rope_scale_for(2, 11.0) == 11.0


def test_keep_ends_and_restart_state():
    x = torch.arange(2 * 3 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 3, 5, 2, 2)
    assert torch.equal(keep_ends(x), torch.stack([x[:, :, 0], x[:, :, 4]], dim=2))
    start = torch.full_like(x, -1.0)
    noise = torch.full_like(x, 9.0)
    latent, restart_noise = restart_state(x, start, noise)
    assert latent[:, :, 0].eq(-1).all() and torch.equal(latent[:, :, 1], x[:, :, 4])
    assert restart_noise[:, :, 0].eq(9).all() and not restart_noise[:, :, 1].any()


class FakeSampler:
    """Records each run; returns its latent + 1 (so the hand-over is visible), reports x0 = latent + 10 per step."""

    def __init__(self):
        self.runs = []

    def __call__(self, latent, noise, mask, sigmas, first_step, on_denoised, restart):
        self.runs.append(dict(frames=latent.shape[2], sigmas=sigmas.clone(), first=first_step, restart=restart,
                              latent=latent.clone(), noise=noise.clone(), mask=mask.clone()))
        for i in range(len(sigmas) - 1):
            if on_denoised is not None:
                on_denoised(first_step + i, latent + 10)
        return latent + 1


def _setup(frames=6):
    start = torch.zeros(1, 2, frames, 2, 2)
    start[:, :, 0] = 3.0
    mask = torch.ones(1, 1, frames, 2, 2)
    mask[:, :, 0] = 0
    sigmas = torch.linspace(1, 0, 7)
    return start, mask, sigmas


def test_drop_at_k_plan():
    start, mask, sigmas = _setup()
    fake = FakeSampler()
    res = temporal_reasoning(fake, start, mask, lambda lat: torch.full_like(lat, 0.5), sigmas, 2, lambda x: x)
    first, second = fake.runs
    assert first["frames"] == 6 and torch.equal(first["sigmas"], sigmas[:3]) and first["first"] == 0
    assert second["frames"] == 2 and torch.equal(second["sigmas"], sigmas[2:]) and second["first"] == 2
    assert second["restart"] and not first["restart"]
    assert second["latent"][:, :, 0].eq(3).all() and second["latent"][:, :, 1].eq(1).all()  # state of frame -1
    assert second["noise"][:, :, 0].eq(0.5).all() and not second["noise"][:, :, 1].any()
    assert torch.equal(second["mask"], mask[:, :, [0, -1]])
    assert res.edited.shape[2] == 2 and res.edited[:, :, 0].eq(3).all()  # frame 0 pinned
    assert res.trajectory.shape[2] == 6 and res.trajectory[:, :, 0].eq(3).all()
    assert res.trajectory[:, :, 1:-1].eq(10).all()  # the reasoning frames as last denoised (0 + 10)
    assert torch.equal(res.trajectory[:, :, -1], res.edited[:, :, -1])


def test_k0_and_k_steps_and_two_frames():
    start, mask, sigmas = _setup()
    fake = FakeSampler()
    res = temporal_reasoning(fake, start, mask, torch.zeros_like, sigmas, 0, lambda x: x)
    assert [r["frames"] for r in fake.runs] == [2] and torch.equal(fake.runs[0]["sigmas"], sigmas)
    assert res.trajectory.shape[2] == 2
    fake = FakeSampler()
    res = temporal_reasoning(fake, start, mask, torch.zeros_like, sigmas, 6, lambda x: x)
    assert [r["frames"] for r in fake.runs] == [6] and res.trajectory.shape[2] == 6 and res.edited.shape[2] == 2
    fake = FakeSampler()
    res = temporal_reasoning(fake, start[:, :, :2], mask[:, :, :2], torch.zeros_like, sigmas, 0, lambda x: x)
    assert [r["frames"] for r in fake.runs] == [2]
    with pytest.raises(ValueError, match="0..steps"):
        temporal_reasoning(fake, start, mask, torch.zeros_like, sigmas, 7, lambda x: x)
