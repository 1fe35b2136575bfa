"""Which SAE features fire on which token: a table for JSON and a heat-map image, labelled by directions."""
from __future__ import annotations

import numpy as np
import torch


def feature_table(codes: torch.Tensor, token_texts: list[str], positions: list[int], top_n: int = 8,
                  labels: dict[int, list[str]] | None = None) -> dict:
    """codes (T, m) for the prompt's real tokens -> per token its top features (id, activation, labels)."""
    if codes.shape[0] != len(token_texts) or len(token_texts) != len(positions):
        raise ValueError("codes, token texts and positions must describe the same tokens")
    labels = labels or {}
    rows = []
    for i, (text, pos) in enumerate(zip(token_texts, positions)):
        values, ids = codes[i].topk(min(top_n, codes.shape[1]))
        feats = [{"id": int(f), "activation": round(float(v), 5), "labels": labels.get(int(f), [])}
                 for v, f in zip(values, ids) if v > 0]
        rows.append({"position": int(pos), "token": text, "features": feats})
    return {"tokens": rows}


def heatmap(codes: torch.Tensor, token_texts: list[str], table: dict, max_columns: int = 48,
            cell: int = 14) -> torch.Tensor:
    """An IMAGE (1, H, W, 3) in [0, 1]: rows are tokens, columns the features that made any token's top list
    (strongest first), brightness the activation relative to the strongest; labelled columns are drawn in green."""
    from PIL import Image, ImageDraw

    used = {}
    for row in table["tokens"]:
        for f in row["features"]:
            used[f["id"]] = max(used.get(f["id"], 0.0), f["activation"])
    columns = sorted(used, key=lambda k: -used[k])[:max_columns] or [0]
    labelled = {f["id"] for row in table["tokens"] for f in row["features"] if f.get("labels")}
    values = codes[:, columns].float().cpu().numpy() if codes.numel() else np.zeros((len(token_texts), 1))
    values = values / max(float(values.max()), 1e-12)
    left, top = 110, 40
    width, height = left + cell * len(columns) + 4, top + cell * max(len(token_texts), 1) + 4
    img = Image.new("RGB", (width, height), (12, 12, 16))
    draw = ImageDraw.Draw(img)
    for j, fid in enumerate(columns):
        x = left + j * cell
        draw.text((x + 1, 2 + (j % 3) * 12), str(fid), fill=(120, 220, 120) if fid in labelled else (170, 170, 170))
    for i, text in enumerate(token_texts):
        y = top + i * cell
        draw.text((4, y), text[:16], fill=(230, 230, 230))
        for j, fid in enumerate(columns):
            v = float(values[i, j])
            colour = (int(255 * v), int(160 * v), int(40 * v)) if fid not in labelled else \
                (int(60 * v), int(255 * v), int(90 * v))
            draw.rectangle([left + j * cell, y, left + (j + 1) * cell - 2, y + cell - 2], fill=colour)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
