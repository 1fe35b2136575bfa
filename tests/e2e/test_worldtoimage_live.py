"""World-To-Image through the live server (the shipped LLM + Openverse workflow on the tiny Flux), with loopback
stand-ins for the LLM and for Openverse: the loop runs, stops at the threshold, records references with licence;
the planted API key reaches the stand-in's Authorization header and appears in no output, history, image metadata,
workflow file or server log. The key is bound to the stand-in by the server's owner (issue 22: the file
user/editlab/llm_endpoints.json in the server's user directory, written here and removed), never by the workflow. The
server runs under the loopback-only network guard (tests/conftest.py)."""
import json
from pathlib import Path

import pytest
from conftest import PLANTED_KEY, PLANTED_KEY_ENV
from standins import ChatStandIn, Reply, StandIn, png_bytes

from editlab.client.cli import run_workflow
from editlab.client.workflow import load_workflow

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _respond(body):
    from editlab.models.worldtoimage import judge as J

    system = body["messages"][0]["content"]
    if system == J.JUDGE_SYSTEM:
        n = sum(1 for m in body["messages"] if m)  # the same request shape each time: score from a counter
        _respond.judged = getattr(_respond, "judged", 0) + 1
        a = [3, 10][min(_respond.judged - 1, 1)]
        return {"alignment": a, "visible_keywords": ["zorblax", "desk", "lamp", "wooden"] if a == 10 else ["desk"],
                "reason": f"a={a} n={n}"}
    if system == J.PLAN_SYSTEM:
        return {"diagnosis": "understanding", "prompt": "a brass desk lamp with a green shade on a wooden desk",
                "queries": ["zorblax lamp"], "reason": "brand name"}
    return {"choice": 0, "reason": "first"}


@pytest.fixture
def owner_file(server):
    path = server.workdir / "user" / "editlab" / "llm_endpoints.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    yield path
    path.unlink(missing_ok=True)


def test_openverse_workflow_with_standins_and_the_key_never_leaks(server, workflow_inputs, tmp_path, owner_file):
    workflow = load_workflow(REPO / "workflows" / "worldtoimage_openverse.json")
    api = load_workflow(REPO / "workflows" / "api" / "worldtoimage_openverse.json")
    ids = {v["class_type"]: k for k, v in api.items()}
    with ChatStandIn(responder=_respond) as llm, StandIn() as site:
        owner_file.write_text(json.dumps({"standin": {"base_url": llm.base_url, "key_env": PLANTED_KEY_ENV}}))
        site.routes["/v1/images/"] = Reply(200, {"results": [
            {"url": site.url + "/lamp.png", "title": "Zorblax lamp", "license": "by-sa", "license_version": "4.0",
             "foreign_landing_url": "https://example.org/lamp"}]})
        site.routes["/lamp.png"] = Reply(200, png_bytes(48, 48, (20, 160, 40)), {"Content-Type": "image/png"})
        sets = [f"{ids['EditLabLLM']}.base_url={llm.base_url}", f"{ids['EditLabLLM']}.api_key_env={PLANTED_KEY_ENV}",
                f"{ids['EditLabWebImageSearch']}.endpoint={site.url}/v1/images/",
                f"{ids['EditLabWebImageSearch']}.allow_loopback=true",
                f"{ids['EditLabWebImageSearch']}.use_cache=false",
                f"{ids['EditLabWorldToImage']}.threshold=0"]
        files = run_workflow(server.client, workflow, sets, tmp_path, show_progress=False, tiny="always")
        auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in llm.chats()]
    assert auth and all(a == f"Bearer {PLANTED_KEY}" for a in auth)  # the key was used ...
    texts = [p.read_text() for p in files if p.suffix == ".txt"]
    history = json.loads(next(t for t in texts if '"iterations"' in t).split("\n\n", 1)[1])
    # iteration 0 judged 3/10 (the authors' formula: below the 0.28 gate, combined < 0); iteration 1 planned
    # (understanding: retrieval), retrieved, judged 10/10 with full coverage (s = 0.4: combined 0 >= 0)
    assert history["stopped"] == "threshold" and history["best"] == 1 and len(history["iterations"]) == 2
    ref = history["iterations"][1]["references"][0]
    assert (ref["title"], ref["licence"], ref["source"]) == ("Zorblax lamp", "BY-SA 4.0", "openverse")
    # ... and nowhere else: outputs, history (the server's /history too), PNG metadata, workflow files, server log
    blobs = [p.read_bytes() for p in files]
    blobs.append(json.dumps(server.client.get_json("/history")).encode())
    blobs.append(server.log_path.read_bytes())
    blobs += [p.read_bytes() for p in (REPO / "workflows").rglob("*.json")]
    assert len([p for p in files if p.suffix == ".png"]) == 3  # best + two iterations, metadata included
    assert not [i for i, b in enumerate(blobs) if PLANTED_KEY.encode() in b]


def test_openverse_workflow_offline_as_shipped_records_what_failed(server, workflow_inputs, tmp_path):
    """As shipped (Openverse on the internet, an Ollama that is not running): under the test guard the search is
    refused before any dial, the LLM is unreachable, and the loop still runs and says so."""
    files = run_workflow(server.client, load_workflow(REPO / "workflows" / "worldtoimage_openverse.json"), [],
                         tmp_path, show_progress=False, tiny="always")
    text = next(p.read_text() for p in files if p.suffix == ".txt")
    history = json.loads(text.split("\n\n", 1)[1])
    assert len(history["iterations"]) == 3 and history["stopped"] == "iterations"
    it1 = history["iterations"][1]
    assert "LLM planning failed, keyword fallback" in it1["notes"][0]
    assert "openverse search failed" in it1["refused"][0]["reason"] and "EDITLAB_NETGUARD" in it1["refused"][0][
        "reason"]
    assert all("scoring failed" in " ".join(it["notes"]) for it in history["iterations"])
