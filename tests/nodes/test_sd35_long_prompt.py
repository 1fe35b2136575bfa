"""SD3.5 with T5 on a prompt longer than one CLIP chunk: the host's own SD3 text encoder (CLIP-L, CLIP-G and a T5 as
wide as the real one, 4096, but one thin layer) concatenates 77 x k CLIP tokens before T5's. The slider's positions
must point at the word's T5 tokens in that conditioning; the check reads them from T5 encoded alone by the host."""
import pytest
import torch

LONG = ("a photo of " + "a very tall old tree in a quiet green park with birds and flowers, " * 6
        + "and a man with a dog sitting on a wooden bench")


@pytest.fixture(scope="module")
def sd35_clip(comfy_host):
    import comfy.text_encoders.sd3_clip

    from editlab.models.tiny.builders import TINY_CLIP, _clip

    t5_wide = {"d_model": 4096, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}
    with torch.inference_mode():
        return _clip(comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True),
                     comfy.text_encoders.sd3_clip.SD3Tokenizer,
                     {"clip_l_model_config": dict(TINY_CLIP), "clip_g_model_config": dict(TINY_CLIP),
                      "t5xxl_model_config": t5_wide}, seed=3)


def test_t5_positions_follow_all_clip_chunks(sd35_clip):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    tokens = sd35_clip.tokenize(LONG)
    chunks = len(tokens["l"])
    assert chunks >= 2, "the prompt must be longer than one CLIP chunk"
    with torch.inference_mode():
        prompt = prompt_tokens(sd35_clip, LONG, "t5")
        assert prompt.offset == 77 * chunks  # not 77
        t5_alone = sd35_clip.cond_stage_model.t5xxl.encode_token_weights(tokens["t5xxl"])[0]
    cond = prompt.embeddings
    assert cond.shape[1] == 77 * chunks + t5_alone.shape[1]
    positions = word_positions(sd35_clip, prompt, "dog")
    assert positions and all(p >= 77 * chunks for p in positions)
    dog_ids = [t for t, _ in sd35_clip.tokenize("dog")["t5xxl"][0] if t not in (0, 1)]
    for p in positions:  # the conditioning there is T5's own output for the word's token
        i = p - prompt.offset
        assert prompt.ids[i] in dog_ids
        assert torch.equal(cond[0, p], t5_alone[0, i].to(cond.dtype))


def test_clip_part_of_a_long_prompt(sd35_clip):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    with torch.inference_mode():
        prompt = prompt_tokens(sd35_clip, LONG, "clip")
    assert prompt.offset == 0
    positions = word_positions(sd35_clip, prompt, "bench")
    assert positions and all(77 <= p < 77 * len(sd35_clip.tokenize(LONG)["l"]) for p in positions)  # a later chunk
