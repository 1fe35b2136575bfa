"""The Triton kernels compile for an H100 (sm_90: Triton's code generator, then ptxas to a cubin) on this machine,
without a GPU: what the CPU interpreter does not check (tl.dot shapes, types, register and shared-memory budgets).

Representative variants: each kernel in the dtypes and flags the dispatcher uses, the attention forward in every
configuration its autotuner may pick. Skipped where Triton itself runs interpreted (TRITON_INTERPRET=1 at import).
"""
import pytest

triton = pytest.importorskip("triton")

from editlab.tests.unit.kernel_interpreter import interpreted  # noqa: E402

pytestmark = pytest.mark.skipif(interpreted(), reason="Triton imported in interpreter mode in this process")

H100_SHARED = 227 * 1024  # bytes of shared memory a block may use on an H100


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # really compile, every time


def spill_bytes(ptx: str, tmp) -> int:
    """Bytes of register spill stores ptxas reports for ``ptx`` on sm_90a (the ptxas bundled with Triton)."""
    import re
    import subprocess
    from pathlib import Path

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    src = Path(tmp) / "k.ptx"
    src.write_text(ptx)
    done = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", done.stdout + done.stderr))


def compile_sm90(fn, types, constexprs, num_warps=4, num_stages=3):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps,
                                                                          "num_stages": num_stages})
    assert kernel.asm.get("cubin"), "ptxas produced no cubin"
    assert kernel.metadata.shared <= H100_SHARED, kernel.metadata.shared
    return kernel


ATTN_STRIDES = ("sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son", "sbb", "sbh",
                "sbn")


def _forward_types(dt, has_v=True):
    t = {n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
    t.update(slot_ptr="*i32", bias_ptr="*fp32", lse_ptr="*fp32", probs_ptr="*fp32", qk_scale="fp32")
    t["out_ptr"] = f"*{dt}" if has_v else "*fp32"  # without values the output pointer is an unused stand-in
    t.update({n: "i64" for n in ATTN_STRIDES})
    return t


@pytest.mark.parametrize("has_probs", [False, True], ids=["no maps", "maps folded in"])
@pytest.mark.parametrize("i", range(6), ids=lambda i: f"config{i}")
def test_attention_forward_every_autotuned_config_bf16_d128(i, has_probs, tmp_path):
    from editlab.kernels.attention import triton_attention as ta

    cfg = ta._FORWARD_CONFIGS[i]
    if cfg not in ta._prune(ta._forward_tuned.configs, {}, BLOCK_D=128, HAS_PROBS=has_probs):
        pytest.skip("the autotuner does not try this tiling here")
    flags = dict(HAS_BIAS=True, HAS_PROBS=has_probs, HAS_V=True, ALLOW_TF32=True, DOT_F32=False, EVEN_N=True,
                 EVEN_D=True, BLOCK_D=128, BLOCK_S=16)
    kernel = compile_sm90(ta._forward, _forward_types("bf16"), {**flags, **cfg.kwargs}, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)
    assert spill_bytes(kernel.asm["ptx"], tmp_path) <= 64  # the tilings that spill more were left out


@pytest.mark.parametrize("has_probs", [False, True], ids=["no maps", "maps folded in"])
@pytest.mark.parametrize("i", range(2), ids=lambda i: f"wide{i}")
def test_attention_forward_head_dim_256_bf16(i, has_probs, tmp_path):
    """Head dim 256: the tiles the autotuner keeps for it (``_prune``) compile, fit, and do not spill."""
    from editlab.kernels.attention import triton_attention as ta

    cfg = ta._prune(ta._forward_tuned.configs, {}, BLOCK_D=256, HAS_PROBS=has_probs)[i]
    flags = dict(HAS_BIAS=True, HAS_PROBS=has_probs, HAS_V=True, ALLOW_TF32=True, DOT_F32=False, EVEN_N=False,
                 EVEN_D=True, BLOCK_D=256, BLOCK_S=16)
    kernel = compile_sm90(ta._forward, _forward_types("bf16"), {**flags, **cfg.kwargs}, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)
    assert spill_bytes(kernel.asm["ptx"], tmp_path) == 0


def test_attention_backward_head_dim_256_bf16(tmp_path):
    from editlab.kernels.attention import triton_attention as ta

    t = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "dk_ptr", "dv_ptr", "dq_ptr")}
    t.update(lse_ptr="*fp32", delta_ptr="*fp32", slot_ptr="*i32", bias_ptr="*fp32", g_ptr="*fp32",
             dbias_ptr="*fp32", qk_scale="fp32", scale="fp32", sbb="i64", sbh="i64", sbn="i64")
    block, warps = ta.backward_tiling(256)
    for kernel in (ta._backward_dkdv, ta._backward_dq):
        compiled = compile_sm90(kernel, t, dict(HAS_BIAS=True, HAS_V=True, HAS_G=True, ALLOW_TF32=True,
                                                DOT_F32=False, BLOCK_M=block, BLOCK_N=block, BLOCK_D=256),
                                num_warps=warps)
        assert spill_bytes(compiled.asm["ptx"], tmp_path) <= 64, kernel  # 32-40 bytes (ptxas -v, sm_90a)


@pytest.mark.parametrize("dt,D,has_v", [("fp16", 64, False), ("fp32", 128, True)])
def test_attention_forward_other_dtypes(dt, D, has_v):
    from editlab.kernels.attention import triton_attention as ta

    compile_sm90(ta._forward, _forward_types(dt, has_v), dict(HAS_BIAS=False, HAS_PROBS=not has_v, HAS_V=has_v,
                                                              BLOCK_S=32, ALLOW_TF32=dt != "fp32",
                                                              DOT_F32=False, EVEN_N=False, EVEN_D=False,
                                                              BLOCK_M=64, BLOCK_N=64, BLOCK_D=D),
                 num_warps=4 if D <= 64 else 8, num_stages=2)


@pytest.mark.parametrize("D", [64, 128])
def test_attention_maps_bf16(D, tmp_path):
    from editlab.kernels.attention import triton_attention as ta

    t = dict(q_ptr="*bf16", k_ptr="*bf16", keys_ptr="*i32", bias_ptr="*fp32", lse_ptr="*fp32", probs_ptr="*fp32",
             scale="fp32", **{n: "i64" for n in ("sqb", "sqh", "sqn", "skb", "skh", "skn", "sbb", "sbh", "sbn")})
    block_m, _, block_d = ta._blocks(4096, D)
    kernel = compile_sm90(ta._key_probs, t, dict(HAS_BIAS=True, ALLOW_TF32=True, DOT_F32=False, BLOCK_M=block_m,
                                                 BLOCK_S=32, BLOCK_D=block_d))
    assert spill_bytes(kernel.asm["ptx"], tmp_path) == 0


@pytest.mark.parametrize("D", [64, 128])
def test_attention_backward_bf16(D, tmp_path):
    from editlab.kernels.attention import triton_attention as ta

    t = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "dk_ptr", "dv_ptr", "dq_ptr")}
    t.update(lse_ptr="*fp32", delta_ptr="*fp32", slot_ptr="*i32", bias_ptr="*fp32", g_ptr="*fp32",
             dbias_ptr="*fp32", qk_scale="fp32", scale="fp32", sbb="i64", sbh="i64", sbn="i64")
    block, warps = ta.backward_tiling(D)
    for kernel in (ta._backward_dkdv, ta._backward_dq):
        compiled = compile_sm90(kernel, t, dict(HAS_BIAS=True, HAS_V=True, HAS_G=True, ALLOW_TF32=True,
                                                DOT_F32=False, BLOCK_M=block, BLOCK_N=block, BLOCK_D=D),
                                num_warps=warps)
        assert spill_bytes(compiled.asm["ptx"], tmp_path) == 0, kernel


@pytest.mark.parametrize("i", range(5), ids=lambda i: f"config{i}")
def test_sae_encoder_every_autotuned_config_bf16(i, tmp_path):
    """(Float32 without TF32 goes to cuBLAS instead.)"""
    from editlab.kernels.sae import triton_encode as te

    cfg = te._encode_tuned.configs[i]
    kernel = compile_sm90(te._encode, dict(x_ptr="*bf16", w_ptr="*bf16", bdec_ptr="*bf16", benc_ptr="*bf16",
                                           out_ptr="*bf16", threshold="fp32", stride_xn="i64", stride_wd="i64",
                                           stride_on="i64"),
                          dict(HAS_BENC=True, HAS_THRESHOLD=True, ALLOW_TF32=True, DOT_F32=False, **cfg.kwargs),
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    assert spill_bytes(kernel.asm["ptx"], tmp_path) <= 64


def test_sae_sparse_kernels_float32(tmp_path):
    """The gathers and the sorted scatter in float32 (the trainer's dtype)."""
    from editlab.kernels.sae import triton_decode as td

    dt = "fp32"
    kernels = [
        compile_sm90(td._gather_sum, dict(vals_ptr=f"*{dt}", idx_ptr="*i64", w_ptr=f"*{dt}", bias_ptr=f"*{dt}",
                                          out_ptr=f"*{dt}", stride_wm="i64", stride_wd="i64"),
                     dict(HAS_BIAS=True, BLOCK_K=64, BLOCK_D=128)),
        compile_sm90(td._gather_dot, dict(grad_ptr=f"*{dt}", idx_ptr="*i64", w_ptr=f"*{dt}", out_ptr=f"*{dt}",
                                          stride_wm="i64", stride_wd="i64"), dict(BLOCK_K=64, BLOCK_D=128)),
        compile_sm90(td._scatter_rows, dict(src_ptr=f"*{dt}", weights_ptr=f"*{dt}", rows_ptr="*i32",
                                            offsets_ptr="*i64", out_ptr=f"*{dt}", stride_om="i64", stride_od="i64"),
                     dict(BLOCK_E=16, BLOCK_D=128))]
    assert all(spill_bytes(k.asm["ptx"], tmp_path) == 0 for k in kernels)
