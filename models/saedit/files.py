"""SAE and direction files: safetensors with metadata, written atomically; the authors' layout read as is."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .sae import SAEConfig, SparseAutoencoder

FORMAT = "editlab.sae.v1"
DIRECTION_FORMAT = "editlab.sae_direction.v1"
SAE_KEYS = ("W_enc", "W_dec", "b_dec")


class SAEFileError(ValueError):
    pass


def _atomic_save(tensors: dict, metadata: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_sae(sae: SparseAutoencoder, path: Path, encoder: str = "", stats: dict | None = None) -> Path:
    tensors = {k: v for k, v in sae.state_dict().items()}
    metadata = {"format": FORMAT, "config": sae.config.to_dict(), "encoder": encoder, "stats": stats or {}}
    return _atomic_save(tensors, metadata, path)


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


def load_sae(path: Path) -> tuple[SparseAutoencoder, dict]:
    """Load this pack's SAE files or the authors' layout (same names, no metadata: sizes read from the shapes)."""
    tensors, metadata = _read(path, "SAE")
    missing = [k for k in SAE_KEYS if k not in tensors]
    if missing:
        raise SAEFileError(f"{Path(path).name} is not an SAE file: it lacks {', '.join(missing)} "
                           f"(expected W_enc, b_enc, W_dec, b_dec, threshold)")
    d, m = tensors["W_enc"].shape
    if tensors["W_dec"].shape != (m, d) or tensors["b_dec"].shape != (d,):
        raise SAEFileError(f"{Path(path).name}: inconsistent shapes W_enc {tuple(tensors['W_enc'].shape)}, "
                           f"W_dec {tuple(tensors['W_dec'].shape)}, b_dec {tuple(tensors['b_dec'].shape)}")
    if metadata.get("format") == FORMAT:
        config = SAEConfig(**json.loads(metadata["config"]))
        info = {"encoder": metadata.get("encoder", ""), "stats": json.loads(metadata.get("stats", "{}"))}
    else:
        # The authors' module saves no configuration; at inference only the threshold matters.
        config = SAEConfig(act_size=d, dict_size=m, top_k=min(32, m))
        info = {"encoder": "", "stats": {}, "layout": "authors"}
    sae = SparseAutoencoder(config)
    state = {"W_enc": tensors["W_enc"], "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"],
             "b_enc": tensors.get("b_enc", torch.zeros(m)),
             "threshold": tensors.get("threshold", torch.tensor(0.0)).reshape(())}
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    sae.eval()
    return sae, info


def save_direction(direction: torch.Tensor, feature_ids: torch.Tensor, weights: torch.Tensor, path: Path,
                   pairs: list[tuple[str, str]], method: str, sae_name: str = "") -> Path:
    tensors = {"direction": direction, "feature_ids": feature_ids.to(torch.int64), "weights": weights}
    metadata = {"format": DIRECTION_FORMAT, "pairs": pairs, "method": method, "sae": sae_name}
    return _atomic_save(tensors, metadata, path)


def load_direction(path: Path) -> dict:
    tensors, metadata = _read(path, "direction")
    if metadata.get("format") != DIRECTION_FORMAT or "direction" not in tensors:
        raise SAEFileError(f"{Path(path).name} is not an EditLab SAE direction file")
    return {"direction": tensors["direction"].float(), "feature_ids": tensors["feature_ids"],
            "weights": tensors["weights"].float(), "pairs": [tuple(p) for p in json.loads(metadata["pairs"])],
            "method": metadata.get("method", ""), "sae": metadata.get("sae", "")}
