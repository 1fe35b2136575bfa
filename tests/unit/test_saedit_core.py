"""SAEdit in plain torch: the SAE's formulas, training, files (ours and the authors' layout), directions,
schedule and the token-local edit."""
import math

import pytest
import torch
from safetensors.torch import save_file

from editlab.models.saedit.direction import aggregate, direction_from_pairs, pair_vector
from editlab.models.saedit.edit import apply_token_edit, decoded_delta
from editlab.models.saedit.files import SAEFileError, load_direction, load_sae, save_direction, save_sae
from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
from editlab.models.saedit.schedule import step_strength, strengths
from editlab.models.saedit.slider import strength_ranges
from editlab.models.saedit.train import TrainConfig, train_sae


def tiny_sae(d=8, m=32, k=4, seed=0, **kw):
    sae = SparseAutoencoder(SAEConfig(act_size=d, dict_size=m, top_k=k, **kw))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def test_authors_layout_loads_and_follows_the_stated_formulas(tmp_path):
    g = torch.Generator().manual_seed(1)
    d, m = 6, 20
    W_enc, W_dec = torch.randn(d, m, generator=g), torch.randn(m, d, generator=g)
    b_enc, b_dec, threshold = torch.randn(m, generator=g), torch.randn(d, generator=g), torch.tensor(0.7)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold},
              str(tmp_path / "authors.safetensors"))
    sae, info = load_sae(tmp_path / "authors.safetensors")
    assert info["layout"] == "authors" and sae.config.act_size == d and sae.config.dict_size == m
    x = torch.randn(5, d, generator=g)
    acts = torch.relu((x - b_dec) @ W_enc)  # b_enc is not used by the encoder
    expected_codes = acts * (acts > 0.7)
    assert torch.allclose(sae.encode(x), expected_codes, atol=1e-6)
    assert torch.allclose(sae.decode(expected_codes), expected_codes @ W_dec + b_dec, atol=1e-6)


def test_batch_topk_keeps_k_per_token_on_average_across_the_batch():
    sae = tiny_sae(k=3)
    acts = torch.rand(10, 32)
    kept = sae.batch_topk(acts)
    assert int((kept > 0).sum()) == 30
    assert kept.max() == acts.max() and torch.all((kept == 0) | (kept == acts))


def test_matryoshka_groups_must_add_up():
    with pytest.raises(ValueError, match="add up to dict_size 32"):
        SAEConfig(act_size=8, dict_size=32, group_sizes=[8, 8])


def test_training_lowers_error_learns_a_threshold_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(24, 16, generator=g)
    codes = torch.rand(3000, 24, generator=g) * (torch.rand(3000, 24, generator=g) < 0.1)
    tokens = codes @ atoms + 0.01 * torch.randn(3000, 16, generator=g)
    cfg = SAEConfig(act_size=16, dict_size=48, top_k=4, group_sizes=[16, 32], n_batches_to_dead=5)
    seen = []
    sae, stats = train_sae(tokens, cfg, TrainConfig(lr=3e-3, batch_size=256, epochs=8, seed=3),
                           on_step=lambda s, t, st: seen.append(st["fvu"]))
    assert seen[-1] < seen[0] / 2
    assert stats["fvu"] < 0.35 and sae.threshold > 0
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(48), atol=1e-5)
    again, _ = train_sae(tokens, cfg, TrainConfig(lr=3e-3, batch_size=256, epochs=8, seed=3))
    assert torch.equal(sae.W_enc, again.W_enc)


def test_training_can_be_stopped():
    class Stop(Exception):
        pass

    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 2:
            raise Stop

    with pytest.raises(Stop):
        train_sae(torch.randn(100, 8), SAEConfig(8, 16, 2), TrainConfig(batch_size=10, epochs=5), should_stop=stop)
    assert len(calls) == 3


def test_saved_file_round_trips_and_is_atomic(tmp_path):
    sae = tiny_sae()
    with torch.no_grad():
        sae.threshold.fill_(0.25)
    path = save_sae(sae, tmp_path / "sae" / "mine.safetensors", encoder="t5xxl", stats={"fvu": 0.1})
    assert sorted(p.name for p in path.parent.iterdir()) == ["mine.safetensors"]  # no leftover .part
    back, info = load_sae(path)
    assert info["encoder"] == "t5xxl" and info["stats"]["fvu"] == 0.1 and back.config == sae.config
    x = torch.randn(4, 8)
    assert torch.equal(back.encode(x), sae.encode(x))


def test_bad_sae_files_are_named(tmp_path):
    path = save_sae(tiny_sae(), tmp_path / "ok.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(SAEFileError, match="cut.safetensors is not a readable safetensors file"):
        load_sae(tmp_path / "cut.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(SAEFileError, match="lora.safetensors is not an SAE file: it lacks W_enc, W_dec, b_dec"):
        load_sae(tmp_path / "lora.safetensors")
    with pytest.raises(SAEFileError, match="does not exist"):
        load_sae(tmp_path / "nope.safetensors")


def test_pair_vector_follows_the_recipe():
    src = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.2, 0.0, 0.0, 0.0]])
    tgt = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3]])
    # max-pooled: src [1, 0, .5, 0], tgt [1, 2, .5, .3]; ratios [1, 2e6, 1, 3e5]; 99.5th percentile keeps feature 1
    assert torch.equal(pair_vector(src, tgt), torch.tensor([0.0, 2.0, 0.0, 0.0]))
    assert torch.equal(pair_vector(src, tgt, percentile=50), torch.tensor([0.0, 2.0, 0.0, 0.3]))


def test_aggregate_svd_aligns_sign_and_stays_on_the_support():
    vectors = torch.tensor([[0.0, 2.0, 0.0, 0.1], [0.0, 1.8, 0.0, 0.0], [0.0, 2.2, 0.0, 0.2]])
    for method in ("svd", "mean_unit"):
        d = aggregate(vectors, method)
        assert math.isclose(float(d.norm()), 1.0, rel_tol=1e-6)
        assert d[1] > 0.9 and d[0] == 0 and d[2] == 0  # sign follows the mean; no feature outside the support
    # the authors' mean is the plain mean of the pair vectors (not normalised): here by hand
    d = aggregate(vectors, "mean")
    assert torch.allclose(d, torch.tensor([0.0, 6.0 / 3, 0.0, 0.3 / 3]))
    assert math.isclose(float(d.norm()), math.sqrt(4.0 + 0.01), rel_tol=1e-6)  # 2.0025: the unit one's scale



def test_direction_from_pairs_by_hand():
    """Three pairs over a 6-feature dictionary, worked out by hand. Every source fires feature 0 only, which no
    target has (ratio 0). Feature 4 rises in the first two targets (3, 4), feature 1 in the second (2), feature 5 in
    the third (0.5): at the 50th percentile each pair keeps exactly its rising features. The mean and the SVD's first
    vector are computed here from those vectors by hand (a 2x2 eigenproblem), independently of the code."""
    src = [torch.tensor([[1.0, 0, 0, 0, 0, 0]]), torch.tensor([[1.0, 0, 0, 0, 0, 0]]),
           torch.tensor([[1.0, 0, 0, 0, 0, 0]])]
    tgt = [torch.tensor([[0.0, 0, 0, 0, 3, 0]]), torch.tensor([[0.0, 2, 0, 0, 4, 0]]),
           torch.tensor([[0.0, 0, 0, 0, 0, 0.5]])]
    out = direction_from_pairs(list(zip(src, tgt)), "mean", percentile=50)
    vectors = torch.tensor([[0, 0, 0, 0, 3, 0], [0, 2, 0, 0, 4, 0], [0, 0, 0, 0, 0, 0.5]])
    assert torch.equal(out["pair_vectors"], vectors)
    mean = torch.tensor([0, 2 / 3, 0, 0, 7 / 3, 0.5 / 3])
    assert torch.allclose(out["direction"], mean)  # the authors' mean: not normalised
    unit = direction_from_pairs(list(zip(src, tgt)), "mean_unit", percentile=50)
    assert torch.allclose(unit["direction"], mean / mean.norm())
    assert out["feature_ids"].tolist() == [4, 1, 5]  # by weight
    # svd: V^T V = diag-block [[4, 8], [8, 25]] on features (1, 4) and 0.25 on feature 5; the top eigenvector of the
    # 2x2 block (eigenvalue 27.72 > 0.25) is (8, 27.72 - 4) normalised
    lam = (29 + math.sqrt(21 ** 2 + 4 * 64)) / 2
    v = torch.tensor([8.0, lam - 4])
    v = v / v.norm()
    svd = direction_from_pairs(list(zip(src, tgt)), "svd", percentile=50)
    want = torch.zeros(6)
    want[1], want[4] = v
    assert torch.allclose(svd["direction"], want, atol=1e-5) and svd["feature_ids"].tolist() == [4, 1]


def test_direction_errors_are_clear():
    with pytest.raises(ValueError, match="the pair list is empty"):
        direction_from_pairs([])
    with pytest.raises(ValueError, match="no pair selected any feature"):
        aggregate(torch.zeros(2, 4))


def test_direction_file_round_trip(tmp_path):
    d = torch.tensor([0.0, 0.6, 0.8])
    path = save_direction(d, torch.tensor([2, 1]), torch.tensor([0.8, 0.6]), tmp_path / "smile.safetensors",
                          pairs=[("a man", "a smiling man")], method="svd", sae_name="t5.safetensors")
    back = load_direction(path)
    assert torch.equal(back["direction"], d) and back["pairs"] == [("a man", "a smiling man")]
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SAEFileError, match="not an EditLab SAE direction file"):
        load_direction(tmp_path / "other.safetensors")


@pytest.mark.parametrize("n", [8, 20, 40])
def test_exponential_schedule_matches_the_formula_at_any_step_count(n):
    for f in (0.1, 0.5, 1.0):
        got = strengths("exponential", f, n)
        want = [min(math.exp((i / n) * 15 * f) - 1, 15 * f) for i in range(n)]
        assert got == pytest.approx(want, rel=1e-12)
        assert got[0] == 0.0  # step 0 unedited
        assert strengths("exponential", -f, n) == pytest.approx([-s for s in want])
    assert strengths("linear", 1.0, n)[n // 2] == pytest.approx(15 * (n // 2) / n)
    assert strengths("constant", 0.2, n) == pytest.approx([3.0] * n)


@pytest.mark.parametrize("f", [0.05, 0.3, -0.5, 1.0])
def test_authors_timing_is_their_grid_one_step_late(f):
    """Their factors as their code builds them: linspace(0, 40, 40) / 40 (k / 39), exp(x * 15 |f|) - 1 capped at
    15 |f|; their step-end callback edits step k with factor k - 1, step 0 runs unedited."""
    import numpy as np

    x = np.linspace(0, 40, num=40) / 40.0
    theirs = np.minimum(np.exp(x * 15 * abs(f)) - 1, 15 * abs(f)) * np.sign(f)
    want = [0.0] + theirs[:-1].tolist()
    assert strengths("exponential", f, 40, timing="authors") == pytest.approx(want, rel=1e-12, abs=1e-12)
    ranges = strength_ranges("exponential", f)  # the slider's default timing: the same values on the 40-point grid
    per_point = [next(s for a, b, s in ranges if a <= k / 40 < b or (k == 39 and b == 1.0)) for k in range(40)]
    assert per_point == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert strength_ranges("exponential", f, timing="undelayed")[1][2] == pytest.approx(
        math.copysign(math.exp(15 * abs(f) / 40) - 1, f))  # the earlier grid: k / 40, no delay
    lin = strengths("linear", 1.0, 40, timing="authors")
    assert lin[:3] == pytest.approx([0.0, 0.0, 15 / 39]) and lin[-1] == pytest.approx(15 * 38 / 39)
    assert strengths("constant", 0.2, 40, timing="authors") == pytest.approx([0.0] + [3.0] * 39)


def test_schedule_rejects_nan_and_unknown():
    with pytest.raises(ValueError, match="strength must be a finite number"):
        step_strength("exponential", float("nan"), 0, 10)
    with pytest.raises(ValueError, match="schedule must be one of"):
        step_strength("cosine", 1.0, 0, 10)


def test_edit_is_token_local_linear_and_exact_elsewhere():
    sae = tiny_sae()
    direction = aggregate(torch.rand(3, 32) * (torch.rand(3, 32) > 0.8), "svd")
    delta = decoded_delta(sae, direction)
    emb = torch.randn(2, 10, 8)
    # the decoded delta is exactly decode(code + s d) - decode(code)
    code = sae.encode(emb[0, 3])
    assert torch.allclose(sae.decode(code + 2.0 * direction) - sae.decode(code), 2.0 * delta, atol=1e-5)
    out = apply_token_edit(emb, [3, 4], delta, 2.0)
    untouched = [i for i in range(10) if i not in (3, 4)]
    assert torch.equal(out[:, untouched], emb[:, untouched])
    assert torch.equal(apply_token_edit(emb, [3, 4], delta, 0.0), emb)
    sizes = [float((apply_token_edit(emb, [3], delta, s) - emb)[:, 3].norm()) for s in (0.5, 1.0, 2.0, 4.0)]
    assert sizes == sorted(sizes) and sizes[0] > 0
    plus, minus = apply_token_edit(emb, [3], delta, 1.5) - emb, apply_token_edit(emb, [3], delta, -1.5) - emb
    assert torch.allclose(plus, -minus)
    chained = apply_token_edit(apply_token_edit(emb, [3], delta, 1.0), [7], delta, -2.0)
    assert torch.allclose(chained - emb, (apply_token_edit(emb, [3], delta, 1.0) - emb) +
                          (apply_token_edit(emb, [7], delta, -2.0) - emb))
    with pytest.raises(ValueError, match="8 wide but the embeddings are 5 wide"):
        apply_token_edit(torch.zeros(1, 3, 5), [0], delta, 1.0)


def test_conditioning_layouts_per_family():
    from editlab.models.saedit.tokens import resolve_part

    assert resolve_part({"l", "t5xxl"}, 256, "auto") == ("t5xxl", 0)  # Flux: T5 only
    assert resolve_part({"l", "g", "t5xxl"}, 77 + 256, "auto") == ("t5xxl", 77)  # SD3.5: CLIP-L/G first, then T5
    assert resolve_part({"l", "g", "t5xxl"}, 77 + 256, "clip") == ("l", 0)
    assert resolve_part({"l", "g", "t5xxl"}, 77, "auto") == ("l", 0)  # SD3 loaded without T5
    assert resolve_part({"l", "g"}, 77, "auto") == ("l", 0)  # SDXL
    assert resolve_part({"umt5xxl"}, 512, "t5") == ("umt5xxl", 0)  # Wan
    # SD3 with the loaded encoders known: T5-only and CLIP-only both give 77 tokens for a short prompt
    assert resolve_part({"l", "g", "t5xxl"}, 77, "auto", loaded={"t5xxl"}) == ("t5xxl", 0)
    assert resolve_part({"l", "g", "t5xxl"}, 77, "auto", loaded={"l", "g"}) == ("l", 0)
    assert resolve_part({"l", "g", "t5xxl"}, 77 + 77, "t5", loaded={"l", "g", "t5xxl"}) == ("t5xxl", 77)
    assert resolve_part({"l", "g", "t5xxl"}, 77, "clip", loaded={"g"}) == ("g", 0)
    with pytest.raises(ValueError, match="no CLIP tokens"):
        resolve_part({"l", "g", "t5xxl"}, 77, "clip", loaded={"t5xxl"})
    with pytest.raises(ValueError, match="no CLIP tokens"):
        resolve_part({"l", "t5xxl"}, 256, "clip")
    with pytest.raises(ValueError, match="no T5 tokens"):
        resolve_part({"l", "g", "t5xxl"}, 77, "t5")


@pytest.mark.parametrize("sparsity", ["topk", "batch_topk"])
def test_the_auxiliary_loss_revives_dead_latents(sparsity):
    """A quarter of the dictionary starts dead by competition (encoder columns shrunk 100x: positive but tiny
    activations that never make the top k). Without the auxiliary loss no gradient ever reaches them and they stay
    dead; with it (the authors' top-k of dead latents reconstructing the residual) they come back."""
    from editlab.models.saedit.train import evaluate_sae

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(48, 16, generator=g)
    data = torch.relu(torch.randn(4096, 48, generator=g)) @ basis / 6  # 48 directions in 16-d
    revived = {}
    for penalty in (0.0, 1 / 32):
        cfg = SAEConfig(act_size=16, dict_size=64, top_k=4, aux_k=16, aux_penalty=penalty, n_batches_to_dead=5,
                        sparsity=sparsity)
        sae = SparseAutoencoder(cfg)
        sae.reset_parameters(torch.Generator().manual_seed(1))
        with torch.no_grad():
            sae.b_dec.copy_(data.mean(0))
            sae.W_enc[:, 48:] *= 0.01
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for step in range(400):
            x = data[(step * 256) % 4096:(step * 256) % 4096 + 256]
            loss = sae.training_losses(x)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sae.normalize_decoder()
        with torch.no_grad():
            codes = sae.training_codes(sae.pre_activations(data))
        revived[penalty] = int(((codes[:, 48:] > 0).sum(0) > 0).sum())
    assert revived[0.0] == 0, revived
    assert revived[1 / 32] >= 8, revived  # at least half of the 16 sabotaged latents fire again
