"""Bad input through ./editlab: a clear message, a non-zero exit, and a server that goes on serving."""
import json
from pathlib import Path

import pytest

from editlab.client.server import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TOUR = json.loads((REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json").read_text())


def _write(tmp_path, prompt, name="wf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(prompt) if not isinstance(prompt, str) else prompt)
    return path


def _broken(change):
    prompt = json.loads(json.dumps(TOUR))
    change(prompt)
    return prompt


CASES = {
    "unknown node type": (_broken(lambda p: p.update({"9": {"class_type": "NoSuchNode", "inputs": {}}})),
                          [], "node 9: unknown node type 'NoSuchNode'"),
    "missing required input": (_broken(lambda p: p["6"]["inputs"].pop("steps")),
                               [], "node 6 (KSampler): required input 'steps' is not set"),
    "link of the wrong type": (_broken(lambda p: p["7"]["inputs"].update({"vae": ["1", 0]})),
                               [], "input 'vae' expects VAE but is linked to node 1 (EditLabTinyModels) output 0 "
                                   "of type MODEL"),
    "--set names a missing node": (TOUR, ["--set", "42.seed=1"], "the workflow has no node '42'"),
    "--set names a missing input": (TOUR, ["--set", "6.strength=0.8"], "node 6 (KSampler) has no input 'strength'"),
    "--set gives a bad value": (TOUR, ["--set", "6.steps=many"], "expected an integer, got 'many'"),
    "malformed JSON": ('{"1": {"class_type": ', [], "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named_and_fails(case, server, editlab_cli, tmp_path):
    prompt, extra, message = CASES[case]
    done = editlab_cli("run", _write(tmp_path, prompt), "--server", server.url, "--out", tmp_path / "out", *extra)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing written"
    assert server.client.ping(), "the server must keep serving"


def test_unreachable_server(editlab_cli, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = editlab_cli("run", _write(tmp_path, TOUR), "--server", url, timeout=60)
    assert done.returncode == 2
    assert f"cannot reach the ComfyUI server at {url}" in done.stderr


def test_missing_file_and_bad_url(editlab_cli, tmp_path):
    done = editlab_cli("run", tmp_path / "nope.json", "--server", "http://127.0.0.1:1")
    assert done.returncode == 2 and "cannot read workflow" in done.stderr
    done = editlab_cli("run", _write(tmp_path, TOUR), "--server", "ftp://x")
    assert done.returncode == 2 and "server URL must look like http://HOST:PORT" in done.stderr


def test_execution_error_on_the_server_is_reported(server, editlab_cli, tmp_path):
    # A prompt the checks pass but execution rejects: a latent far larger than the server allows.
    prompt = _broken(lambda p: p["5"]["inputs"].update({"width": 16, "height": 16, "batch_size": 1}))
    prompt["6"]["inputs"]["denoise"] = 1.0
    prompt["6"]["inputs"]["sampler_name"] = "euler"
    prompt["6"]["inputs"]["steps"] = 1
    prompt["7"]["inputs"]["samples"] = ["5", 0]  # decode the empty latent: fine
    prompt["1"]["inputs"]["architecture"] = "sd15"  # a 4-channel VAE fed a 16-channel latent: fails at run time
    done = editlab_cli("run", _write(tmp_path, prompt), "--server", server.url, "--out", tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert "node 7 (VAEDecode) failed" in done.stderr
    assert server.client.ping()
    ok = editlab_cli("run", REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json", "--server", server.url,
                     "--out", tmp_path / "after", "-q")
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr


def test_nodes_lists_the_pack(server, editlab_cli):
    done = editlab_cli("nodes", "--server", server.url)
    assert done.returncode == 0 and "EditLabTinyModels" in done.stdout
