"""Every shipped workflow queued from the page, as a user presses Run, and its outputs seen in the page.

The test server has no real weights, so what the page would queue (``app.graphToPrompt()``) goes through the same
``--tiny`` substitution the client does (``client.cli.prepare_prompt``) and is queued with the front end's own
``api.queuePrompt``; the page's client then receives the progress and output messages. The check is on the page's
side: each Save Image node shows its images (loaded from /view), and the run ends without an execution error.
"""
import json

import pytest

from editlab.client.cli import prepare_prompt
from editlab.tests.browser.templates import NAMES, open_workflow

pytestmark = pytest.mark.e2e

LISTEN = """(() => {
  const api = window.comfyAPI.api.api;
  if (!window.__editlab) {
    window.__editlab = {events: []};
    for (const kind of ['executed', 'execution_success', 'execution_error', 'execution_interrupted'])
      api.addEventListener(kind, (e) => window.__editlab.events.push({kind, detail: e.detail}));
  }
  window.__editlab.events = [];
  return true;
})()"""

QUEUE = """(async (output) => {
  const api = window.comfyAPI.api.api;
  const p = await app.graphToPrompt();
  const res = await api.queuePrompt(0, {output, workflow: p.workflow});
  return res.prompt_id;
})"""

STATE = """(() => {
  const done = window.__editlab.events.find(e => ['execution_success', 'execution_error',
                                                   'execution_interrupted'].includes(e.kind));
  return {done: done ? {kind: done.kind, detail: done.detail} : null};
})()"""

# The page's record of each Save Image node's outputs (what the node previews), each image loaded from /view as
# the node's preview loads it.
SHOWN = """(async () => {
  const api = window.comfyAPI.api.api;
  const load = (ref) => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img.naturalWidth > 0);
    img.onerror = () => resolve(false);
    img.src = api.apiURL('/view?' + new URLSearchParams({filename: ref.filename, type: ref.type,
                                                         subfolder: ref.subfolder || ''}));
  });
  const saves = [], texts = [];
  for (const n of app.graph.nodes) {
    const output = (app.nodeOutputs || {})[String(n.id)] || {};
    if (n.type === 'SaveImage') {
      const refs = output.images || [];
      const loaded = await Promise.all(refs.map(load));
      saves.push({id: n.id, title: n.title, images: refs.length, shown: loaded.filter(Boolean).length});
    }
    if (output.text) texts.push({id: n.id, type: n.type, text: [].concat(output.text).join(' ')});
  }
  return {saves, texts};
})()"""


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_from_the_page_and_shows_its_outputs(name, page, object_info, artifacts):
    import time

    open_workflow(page, name)
    output = page.evaluate("app.graphToPrompt().then(p => p.output)")
    prompt = prepare_prompt(output, object_info, tiny="always")  # the client's own --tiny
    assert not [n for n in prompt.values() if n["class_type"] in ("UNETLoader", "CheckpointLoaderSimple")]
    page.evaluate(LISTEN)
    page.evaluate(f"{QUEUE}({json.dumps(prompt)})")
    deadline, state = time.monotonic() + 300, None
    while time.monotonic() < deadline:
        state = page.evaluate(STATE)
        if state["done"]:
            break
        time.sleep(0.5)
    page.evaluate("new Promise(r => setTimeout(r, 500))")
    page.screenshot(artifacts / f"{name}.run.png")
    assert state["done"], f"the run did not finish: {state}"
    assert state["done"]["kind"] == "execution_success", json.dumps(state["done"]["detail"])[:3000]
    shown = page.evaluate(SHOWN)
    missing = [s for s in shown["saves"] if not (s["images"] and s["shown"] == s["images"])]
    assert not missing, f"Save Image nodes that show no image in the page: {missing}"
    # node ids: numbers in older front ends, strings in newer ones (1.49)
    trainers = {str(n["id"]) for n in shown["texts"] if n["type"] == "EditLabSAETrain"}
    expected = {str(k) for k, v in prompt.items() if v["class_type"] == "EditLabSAETrain"}
    assert trainers == expected, f"SAE Train nodes without their statistics in the page: {expected - trainers}"
    assert shown["saves"] or shown["texts"], "the page shows no output at all"
