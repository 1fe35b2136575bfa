"""Under load: 4 client processes queue 50 tiny-model prompts each at once; nothing lost, mixed up or leaked."""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from editlab.client.api import output_files

pytestmark = pytest.mark.e2e
WORKERS, PER_WORKER = 4, 50


def _load_worker_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("editlab_load_worker", Path(__file__).with_name("load_worker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _completed(client):
    return sum(1 for e in client.get_json("/history?max_items=100000").values()
               if e.get("status", {}).get("completed"))


def test_four_clients_fifty_prompts_each(server, tmp_path):
    client = server.client
    before = _completed(client)
    proc = psutil.Process(server.proc.pid)
    worker = Path(__file__).with_name("load_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), server.url, str(w), str(PER_WORKER),
                               str(tmp_path / f"w{w}.json")], stderr=subprocess.PIPE, text=True)
             for w in range(WORKERS)]
    rss_after_fifth = None
    deadline = time.monotonic() + 900
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if rss_after_fifth is None and _completed(client) - before >= 5:
            rss_after_fifth = proc.memory_info().rss
        time.sleep(0.2)
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    rss_after_last = proc.memory_info().rss

    results = [r for w in range(WORKERS) for r in json.loads((tmp_path / f"w{w}.json").read_text())]
    assert len(results) == WORKERS * PER_WORKER
    assert len({r["prompt_id"] for r in results}) == len(results), "every prompt has its own id"
    for r in results:
        assert len(r["files"]) == 1 and r["files"][0].startswith(r["prefix"] + "_"), r  # its own file
    assert len({r["digests"][0] for r in results}) == len(results), "each prompt's own seed, its own image"
    assert _completed(client) - before == WORKERS * PER_WORKER, "nothing lost"
    assert rss_after_fifth is not None
    growth = rss_after_last / rss_after_fifth
    print(f"server RSS after 5th prompt {rss_after_fifth / 2**20:.0f} MiB, after last {rss_after_last / 2**20:.0f} "
          f"MiB ({growth:.3f}x)")
    assert growth <= 1.10

    # Each output is the right one for its prompt: recompute a sample of them alone, from a cold cache.
    base = json.loads((Path(__file__).with_name("data") / "tiny_flux_t2i.json").read_text())
    for r in random.Random(0).sample(results, 4):
        evict = json.loads(json.dumps(base))  # the cache keeps only the last prompt: this one forces a recompute
        evict["6"]["inputs"].update(seed=987654, steps=1)
        client.wait(client.queue(evict), timeout=300)
        prompt = json.loads(json.dumps(base))
        prompt["6"]["inputs"]["seed"] = r["seed"]
        prompt["8"]["inputs"]["filename_prefix"] = "load/check"
        entry = client.wait(client.queue(prompt), timeout=300)
        (_, ref), = output_files(entry)
        assert _load_worker_module().pixel_digest(client.view(ref)) == r["digests"][0], f"prompt {r['prefix']} got another prompt's image"
