"""SAE and direction files: safetensors with metadata, written atomically; the authors' layout read as is."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..common import atomic_save_safetensors
from .sae import SAEConfig, SparseAutoencoder

FORMAT = "editlab.sae.v1"
DIRECTION_FORMAT = "editlab.sae_direction.v1"
SAE_KEYS = ("W_enc", "W_dec", "b_dec")


class SAEFileError(ValueError):
    pass


def _atomic_save(tensors: dict, metadata: dict, path: Path, overwrite: bool = True) -> Path:
    atomic_save_safetensors(tensors, path, {k: v if isinstance(v, str) else json.dumps(v) for k, v in
                                            metadata.items()}, overwrite=overwrite)
    return Path(path)


def save_sae(sae: SparseAutoencoder, path: Path, encoder: str = "", stats: dict | None = None,
             overwrite: bool = True) -> Path:
    tensors = {k: v for k, v in sae.state_dict().items()}
    metadata = {"format": FORMAT, "config": sae.config.to_dict(), "encoder": encoder, "stats": stats or {}}
    return _atomic_save(tensors, metadata, path, overwrite)


def _read(path: Path, what: str) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise SAEFileError(f"{what} file {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SAEFileError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
    return tensors, metadata


def _json(metadata: dict, key: str, default: str, name: str):
    try:
        return json.loads(metadata.get(key, default))
    except (TypeError, ValueError, RecursionError):
        raise SAEFileError(f"{name}: its '{key}' metadata is not valid JSON") from None


def load_sae(path: Path) -> tuple[SparseAutoencoder, dict]:
    """Load this pack's SAE files or the authors' layout (same names, no metadata: sizes read from the shapes).
    Anything else, or a file whose tensors and configuration disagree, is an SAEFileError."""
    tensors, metadata = _read(path, "SAE")
    name = Path(path).name
    missing = [k for k in SAE_KEYS if k not in tensors]
    if missing:
        raise SAEFileError(f"{name} is not an SAE file: it lacks {', '.join(missing)} "
                           f"(expected W_enc, b_enc, W_dec, b_dec, threshold)")
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(shapes["W_enc"]) != 2:
        raise SAEFileError(f"{name}: W_enc must be a (width, features) matrix; it is {shapes['W_enc']}")
    d, m = shapes["W_enc"]
    want = {"W_dec": (m, d), "b_dec": (d,), "b_enc": (m,)}
    bad = [f"{k} {shapes[k]} (expected {w})" for k, w in want.items() if k in shapes and shapes[k] != w]
    if "threshold" in tensors and tensors["threshold"].numel() != 1:
        bad.append(f"threshold {shapes['threshold']} (expected a scalar)")
    if bad or d == 0 or m == 0:
        raise SAEFileError(f"{name}: inconsistent shapes: W_enc {shapes['W_enc']}, " + ", ".join(bad))
    try:
        if metadata.get("format") == FORMAT:
            raw = _json(metadata, "config", "{}", name)
            if not isinstance(raw, dict):
                raise SAEFileError(f"{name}: its config metadata is not a JSON object")
            known = set(SAEConfig.__dataclass_fields__)
            extra = sorted(set(raw) - known)
            if extra:
                raise SAEFileError(f"{name}: unknown config keys {', '.join(map(str, extra))[:200]}")
            # files written before encoder_bias and sparsity existed: BatchTopK without an encoder bias
            config = SAEConfig(**{"encoder_bias": False, "sparsity": "batch_topk", **raw})
            if (config.act_size, config.dict_size) != (d, m):
                raise SAEFileError(f"{name}: its config says {config.act_size} wide with {config.dict_size} "
                                   f"features; its tensors are {d} wide with {m}")
            info = {"encoder": str(metadata.get("encoder", "")), "stats": _json(metadata, "stats", "{}", name)}
        else:
            # The authors' module saves no configuration; at inference only the threshold matters.
            config = SAEConfig(act_size=d, dict_size=m, top_k=min(32, m), encoder_bias=False,
                               sparsity="batch_topk")
            info = {"encoder": "", "stats": {}, "layout": "authors"}
        sae = SparseAutoencoder(config)
        state = {"W_enc": tensors["W_enc"], "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"],
                 "b_enc": tensors.get("b_enc", torch.zeros(m)),
                 "threshold": tensors.get("threshold", torch.tensor(0.0)).reshape(())}
        sae.load_state_dict({k: v.float() for k, v in state.items()})
    except SAEFileError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:  # a config that does not fit: bad types, sizes, ranges
        raise SAEFileError(f"{name}: not a usable SAE ({str(exc)[:200]})") from None
    sae.eval()
    return sae, info


def save_direction(direction: torch.Tensor, feature_ids: torch.Tensor, weights: torch.Tensor, path: Path,
                   pairs: list[tuple[str, str]], method: str, sae_name: str = "", overwrite: bool = True) -> Path:
    tensors = {"direction": direction, "feature_ids": feature_ids.to(torch.int64), "weights": weights}
    metadata = {"format": DIRECTION_FORMAT, "pairs": pairs, "method": method, "sae": sae_name}
    return _atomic_save(tensors, metadata, path, overwrite)


def load_direction(path: Path) -> dict:
    tensors, metadata = _read(path, "direction")
    name = Path(path).name
    if metadata.get("format") != DIRECTION_FORMAT or "direction" not in tensors:
        raise SAEFileError(f"{name} is not an EditLab SAE direction file")
    missing = [k for k in ("feature_ids", "weights") if k not in tensors]
    if missing:
        raise SAEFileError(f"{name}: a direction file without {', '.join(missing)}")
    direction, ids, weights = tensors["direction"], tensors["feature_ids"], tensors["weights"]
    if direction.ndim != 1 or ids.ndim != 1 or weights.shape != ids.shape or ids.is_floating_point() or \
            (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= direction.shape[0])):
        raise SAEFileError(f"{name}: inconsistent direction tensors (direction {tuple(direction.shape)}, "
                           f"feature_ids {tuple(ids.shape)}, weights {tuple(weights.shape)})")
    pairs = _json(metadata, "pairs", "[]", name)
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise SAEFileError(f"{name}: its 'pairs' metadata is not a list of (source, target) pairs")
    return {"direction": direction.float(), "feature_ids": ids, "weights": weights.float(),
            "pairs": [tuple(p) for p in pairs], "method": str(metadata.get("method", "")),
            "sae": str(metadata.get("sae", ""))}
