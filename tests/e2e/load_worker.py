"""One client process of the load test: queue N prompts at once, then collect each one's own output.

Usage: load_worker.py URL WORKER_INDEX N RESULT.json
"""
import hashlib
import io
import json
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pkg = types.ModuleType("editlab")
pkg.__path__ = [ROOT]
sys.modules["editlab"] = pkg

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from editlab.client.api import ComfyClient, output_files  # noqa: E402


def pixel_digest(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


def seed_of(worker, i):
    """Every prompt samples its own noise, so none is served from another's cache."""
    return 1000 * worker + i


def main(url, worker, n, result_path):
    client = ComfyClient(url)
    with open(os.path.join(ROOT, "tests", "e2e", "data", "tiny_flux_t2i.json")) as f:
        base = json.load(f)
    queued = []
    for i in range(n):
        prompt = json.loads(json.dumps(base))
        seed = seed_of(worker, i)
        prefix = f"load/w{worker}_p{i}"
        prompt["6"]["inputs"]["seed"] = seed
        prompt["8"]["inputs"]["filename_prefix"] = prefix
        queued.append((client.queue(prompt), seed, prefix))
    results = []
    for prompt_id, seed, prefix in queued:
        entry = client.wait(prompt_id, timeout=900)
        files = output_files(entry)
        refs = [ref for _, ref in files]
        digests = []
        for ref in refs:
            digests.append(pixel_digest(client.view(ref)))
        results.append({"prompt_id": prompt_id, "seed": seed, "prefix": prefix,
                        "files": [f"{r['subfolder']}/{r['filename']}" for r in refs], "digests": digests})
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
