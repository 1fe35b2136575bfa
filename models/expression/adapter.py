"""The expression adapter: blendshape vector -> a few tokens in the text-encoder space -> an extra, decoupled
key/value in every cross-attention layer (IP-Adapter style).

The released file (the authors' ``exp_adapter.bin``) follows diffusers' IP-Adapter layout: ``image_proj`` (the
projection of the 52/55-d vector into tokens) and ``ip_adapter`` (``N.to_k_ip.weight``, ``N.to_v_ip.weight`` for
the cross-attention layers in diffusers' processor order: down blocks, up blocks, then the mid block). Two
projection forms exist and are told apart by their keys:
- linear + norm: ``proj.weight`` (T*C, D), ``proj.bias``, ``norm.weight`` (C), ``norm.bias``
- MLP: ``proj.0`` (H, D), GELU, ``proj.2`` (T*C, H), LayerNorm ``proj.3`` (C)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "editlab.expression_adapter.v1"


class AdapterFileError(ValueError):
    pass


def _shape(tensors: dict, key: str, ndim: int) -> tuple:
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise AdapterFileError(f"{key} must be a non-empty {ndim}-d tensor; it is {shape}")
    return shape


def _tokens(rows: int, width: int) -> int:
    if rows % width:
        raise AdapterFileError(f"the projection's {rows} outputs are not a whole number of {width}-wide tokens")
    return rows // width


class TokenProjection(nn.Module):
    def __init__(self, form: str, input_dim: int, cross_dim: int, num_tokens: int, hidden: int = 0):
        super().__init__()
        self.form, self.input_dim, self.cross_dim, self.num_tokens = form, input_dim, cross_dim, num_tokens
        if form == "linear":
            self.proj = nn.Linear(input_dim, num_tokens * cross_dim)
            self.norm = nn.LayerNorm(cross_dim)
        elif form == "mlp":
            self.proj = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * cross_dim),
                                      nn.LayerNorm(cross_dim))
        else:
            raise ValueError(f"unknown projection form {form!r}")

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (B, D) -> tokens (B, T, C)."""
        if self.form == "linear":
            return self.norm(self.proj(values).reshape(-1, self.num_tokens, self.cross_dim))
        lin0, act, lin2, norm = self.proj
        return norm(lin2(act(lin0(values))).reshape(-1, self.num_tokens, self.cross_dim))


class ExpressionAdapter(nn.Module):
    def __init__(self, projection: TokenProjection, inner_dims: list[int]):
        super().__init__()
        self.image_proj = projection
        c = projection.cross_dim
        self.to_k_ip = nn.ModuleList(nn.Linear(c, d, bias=False) for d in inner_dims)
        self.to_v_ip = nn.ModuleList(nn.Linear(c, d, bias=False) for d in inner_dims)

    @property
    def input_dim(self) -> int:
        return self.image_proj.input_dim

    @property
    def layers(self) -> int:
        return len(self.to_k_ip)

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        if values.shape[-1] != self.input_dim:
            raise ValueError(f"this adapter takes {self.input_dim}-d blendshapes; got {values.shape[-1]}-d")
        return self.image_proj(values.to(self.to_k_ip[0].weight))

    def attention(self, layer: int, q: torch.Tensor, tokens: torch.Tensor, heads: int) -> torch.Tensor:
        """q (B, N, inner) already projected; tokens (B, T, C) -> the decoupled attention output (B, N, inner)."""
        k, v = self.to_k_ip[layer](tokens), self.to_v_ip[layer](tokens)
        b, n, inner = q.shape
        split = lambda t: t.reshape(b, -1, heads, inner // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k.to(q)), split(v.to(q)))
        return out.transpose(1, 2).reshape(b, n, inner)

    # -- files ------------------------------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, image_proj: dict, ip_adapter: dict) -> "ExpressionAdapter":
        """Build from the authors' two dicts; anything that does not fit together is an AdapterFileError."""
        for part, what in ((image_proj, "image_proj"), (ip_adapter, "ip_adapter")):
            if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in part.items()):
                raise AdapterFileError(f"'{what}' must be a dict of name -> tensor; it is a "
                                       f"{type(part).__name__}")
        try:
            if "proj.weight" in image_proj:
                rows, d = _shape(image_proj, "proj.weight", 2)
                c, = _shape(image_proj, "norm.weight", 1)
                proj = TokenProjection("linear", d, c, _tokens(rows, c))
            elif "proj.0.weight" in image_proj:
                hidden, d = _shape(image_proj, "proj.0.weight", 2)
                rows, _ = _shape(image_proj, "proj.2.weight", 2)
                c, = _shape(image_proj, "proj.3.weight", 1)
                proj = TokenProjection("mlp", d, c, _tokens(rows, c), hidden)
            else:
                raise AdapterFileError(f"unknown image_proj layout (keys: {', '.join(sorted(image_proj))[:200]})")
            numbers = sorted({int(k.split(".")[0]) for k in ip_adapter
                              if k.endswith(".to_k_ip.weight") and k.split(".")[0].isdigit()})
            if not numbers:
                raise AdapterFileError("no ip_adapter layers (N.to_k_ip.weight) in the file")
            dims = [_shape(ip_adapter, f"{n}.to_k_ip.weight", 2)[0] for n in numbers]
            if min(dims) <= 0 or d <= 0:
                raise AdapterFileError("zero-width layers")
            adapter = cls(proj, dims)
            state = {f"image_proj.{k}": v for k, v in image_proj.items()}
            for i, n in enumerate(numbers):
                state[f"to_k_ip.{i}.weight"] = ip_adapter[f"{n}.to_k_ip.weight"]
                state[f"to_v_ip.{i}.weight"] = ip_adapter[f"{n}.to_v_ip.weight"]
            adapter.load_state_dict({k: v.float() for k, v in state.items()})  # strict: extra keys are refused
        except AdapterFileError:
            raise
        except (KeyError, RuntimeError, ValueError, AttributeError, TypeError, ZeroDivisionError) as exc:
            raise AdapterFileError(f"inconsistent adapter weights: {type(exc).__name__}: {str(exc)[:200]}") \
                from None
        return adapter.eval()

    def parts(self) -> tuple[dict, dict]:
        """The authors' layout again: (image_proj, ip_adapter) with diffusers' odd processor numbers."""
        image_proj = {k[len("image_proj."):]: v for k, v in self.state_dict().items() if k.startswith("image_proj.")}
        ip = {}
        for i in range(self.layers):
            ip[f"{2 * i + 1}.to_k_ip.weight"] = self.to_k_ip[i].weight.detach()
            ip[f"{2 * i + 1}.to_v_ip.weight"] = self.to_v_ip[i].weight.detach()
        return image_proj, ip


@dataclass
class LoadedAdapter:
    """The socket payload of an expression adapter: the network and where it came from. ``host_models`` keeps the
    host's model wrapper of the network (one per device pair) for as long as the payload lives: the host counts a
    network whose wrapper died while the network lives on as a memory leak, and then collects garbage at every
    model load."""
    adapter: ExpressionAdapter
    name: str  # the file name
    input: str  # "arkit52" | "flame55" | "<D>-d"
    format: str  # "authors" (diffusers' IP-Adapter layout) | this pack's FORMAT
    host_models: dict = field(default_factory=dict, repr=False, compare=False)


def load_adapter(path: str) -> tuple[ExpressionAdapter, dict]:
    """The authors' pickled .bin (read with weights_only=True) or this pack's .safetensors."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            image_proj = {k[len("image_proj."):]: v for k, v in tensors.items() if k.startswith("image_proj.")}
            ip = {k[len("ip_adapter."):]: v for k, v in tensors.items() if k.startswith("ip_adapter.")}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or "image_proj" not in data or "ip_adapter" not in data:
                raise AdapterFileError("expected a dict with 'image_proj' and 'ip_adapter' (IP-Adapter layout)")
            image_proj, ip, meta = data["image_proj"], data["ip_adapter"], {}
    except AdapterFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file: corrupt, truncated, not a tensor file
        raise AdapterFileError(f"cannot read the adapter file ({type(exc).__name__}: {str(exc)[:200]})") from None
    adapter = ExpressionAdapter.from_parts(image_proj, ip)
    space = meta.get("input") or ("flame55" if adapter.input_dim == 55 else
                                  "arkit52" if adapter.input_dim == 52 else f"{adapter.input_dim}-d")
    return adapter, {"input": space, "format": meta.get("format", "authors")}


def save_adapter(adapter: ExpressionAdapter, path: str, input_space: str, overwrite: bool = True) -> None:
    """This pack's safetensors layout, written atomically (an existing file only with ``overwrite``)."""
    from ..common import atomic_save_safetensors

    image_proj, ip = adapter.parts()
    tensors = {**{f"image_proj.{k}": v for k, v in image_proj.items()},
               **{f"ip_adapter.{k}": v for k, v in ip.items()}}
    atomic_save_safetensors(tensors, path, {"format": FORMAT, "input": input_space}, overwrite=overwrite)


def random_adapter(input_dim: int, cross_dim: int, inner_dims: list[int], num_tokens: int = 4, form: str = "mlp",
                   seed: int = 0) -> ExpressionAdapter:
    """A fresh adapter (training start, and test fixtures): small random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation (biases) from the seed as well
        torch.manual_seed(seed)
        proj = TokenProjection(form, input_dim, cross_dim, num_tokens, hidden=max(64, input_dim))
        adapter = ExpressionAdapter(proj, inner_dims)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    return adapter.eval()
