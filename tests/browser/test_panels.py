"""The pack's panels in the real ComfyUI front end (headless Chromium): the Blendshape panel's sliders reach the
/prompt body the page itself sends; after runs on the tiny models the SAE feature view, the agent history and the
attention maps show the run's data. A screenshot of each panel is kept under out/test-artifacts/browser/."""
import json
import time

import pytest

from editlab.client.cli import prepare_prompt
from editlab.tests.browser.templates import open_workflow

pytestmark = pytest.mark.e2e

# The page's own fetch is wrapped once: every POST to /prompt (or /api/prompt) keeps its body.
CAPTURE = """(() => {
  if (!window.__editlabPosts) {
    window.__editlabPosts = [];
    const original = window.fetch;
    window.fetch = function (input, init) {
      const url = typeof input === 'string' ? input : input.url;
      if (/\\/prompt$/.test(new URL(url, location.href).pathname) && (init?.method || 'GET') === 'POST')
        window.__editlabPosts.push(JSON.parse(init.body));
      return original.apply(this, arguments);
    };
  }
  window.__editlabPosts.length = 0;
  return true;
})()"""


def _slide(page, node_expr: str, name: str, value: float) -> None:
    """Move a slider as a user's drag ends: set the range input's value and dispatch a real input event."""
    page.evaluate(f"""(() => {{
      const node = {node_expr};
      const input = node.__editlabBlendshapes.root.querySelector('input[data-name="{name}"]');
      input.focus({{preventScroll: true}}); input.value = '{value}';
      input.dispatchEvent(new Event('input', {{bubbles: true}}));
      input.blur();
      return true;
    }})()""")


def _drag(page, node_expr: str, name: str, fraction: float) -> None:
    """Drag a slider with the mouse (DevTools input events, as a user's pointer): press on its thumb's side of
    the track and release at ``fraction`` of its width. The canvas must not take the drag."""
    box = page.evaluate(f"""(() => {{
      const input = {node_expr}.__editlabBlendshapes.root.querySelector('input[data-name="{name}"]');
      input.scrollIntoView({{block: 'center'}});
      const r = input.getBoundingClientRect();
      return [r.left, r.top, r.width, r.height];
    }})()""")
    left, top, width, height = box
    y = top + height / 2
    x0, x1 = left + 4, left + 8 + (width - 16) * fraction  # the thumb is 16 px wide: its centre spans width - 16
    page.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": x0, "y": y, "button": "left",
                                           "clickCount": 1})
    for k in range(1, 6):
        page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x0 + (x1 - x0) * k / 5, "y": y,
                                               "button": "left", "buttons": 1})
    page.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": x1, "y": y, "button": "left",
                                           "clickCount": 1})


def _center_on(page, node_expr: str, scale: float = 1.0) -> int:
    """The node at the canvas's top left (right of the side bar, below the menu), its panel scrolled to the top;
    dialogs and toasts closed. Returns the panel's height on screen (px)."""
    for kind in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", {"type": kind, "key": "Escape", "code": "Escape",
                                             "windowsVirtualKeyCode": 27})
    page.evaluate("(() => { document.querySelectorAll('.p-toast-close-button, .p-dialog-close-button')"
                  ".forEach(b => b.click()); return true; })()")
    page.evaluate(f"""(() => {{
      const node = {node_expr};
      for (const el of document.querySelectorAll('.editlab-panel')) el.scrollTop = 0;
      const panel = node.widgets.find(w => w.name === 'editlab run panel');
      const top = node.pos[1] + (panel ? Math.max(0, (panel.last_y ?? panel.y ?? 0) - 60) : 0);
      app.canvas.ds.scale = {scale};
      app.canvas.ds.offset = [-node.pos[0] + 110 / {scale}, -top + 150 / {scale}];
      app.canvas.setDirty(true, true); app.canvas.draw(true, true);
      return true;
    }})()""")
    page.evaluate("new Promise(r => setTimeout(r, 600))")
    return page.evaluate(f"""(() => {{
      const panel = {node_expr}.widgets.find(w => w.name === 'editlab run panel' || w.name === 'blendshape panel');
      return panel ? panel.element.clientHeight : 0; }})()""")


def test_blendshape_panel_sliders_reach_the_prompt_body(page, artifacts):
    page.evaluate("(() => { app.graph.clear(); return true; })()")
    page.evaluate("""(() => {
      const node = LiteGraph.createNode('EditLabBlendshapeEdit'); node.pos = [100, 100]; app.graph.add(node);
      const show = LiteGraph.createNode('PreviewAny'); show.pos = [700, 100]; app.graph.add(show);
      node.connect(0, show, 0);  // an output node, so the queued prompt is a valid one
      window.__bs = node; return true; })()""")
    node = "window.__bs"
    page.wait_for(f"{node}.__editlabBlendshapes && "
                  f"{node}.__editlabBlendshapes.root.querySelectorAll('input[type=range]').length === 52",
                  timeout=30, what="the blendshape panel's 52 sliders")
    regions = page.evaluate(f"[...{node}.__editlabBlendshapes.root.querySelectorAll('details')]"
                            ".map(d => [d.dataset.region, d.querySelectorAll('input').length])")
    assert [r for r, _ in regions] == ["brows", "eyes", "cheeks", "nose", "jaw", "mouth", "other"]
    assert sum(n for _, n in regions) == 52
    # Symmetric off: only the moved side changes.
    page.evaluate(f"(() => {{ const s = {node}.__editlabBlendshapes.root.querySelector('input[type=checkbox]');"
                  f" if (s.checked) s.click(); return s.checked; }})()")
    _slide(page, node, "jawOpen", 0.7)
    _slide(page, node, "eyeBlinkLeft", 0.4)
    # Symmetric on (the panel's checkbox sets the node's own widget): both sides move.
    page.evaluate(f"(() => {{ const s = {node}.__editlabBlendshapes.root.querySelector('input[type=checkbox]');"
                  f" s.click(); return s.checked; }})()")
    _slide(page, node, "mouthSmileLeft", 0.85)
    # A drag with the mouse moves the slider, not the node.
    pos = page.evaluate(f"Array.from({node}.pos)")
    _center_on(page, node)
    _drag(page, node, "mouthFunnel", 0.5)
    dragged = page.evaluate(f"JSON.parse({node}.widgets.find(w => w.name === 'values').value).mouthFunnel")
    assert dragged == pytest.approx(0.5, abs=0.06) and page.evaluate(f"Array.from({node}.pos)") == pos
    shown = page.evaluate(f"""(() => {{
      const q = (n) => {node}.__editlabBlendshapes.root.querySelector('input[data-name="' + n + '"]').value;
      return {{mouthSmileRight: q('mouthSmileRight'), eyeBlinkRight: q('eyeBlinkRight'),
               symmetric: {node}.widgets.find(w => w.name === 'symmetric').value}};
    }})()""")
    assert shown == {"mouthSmileRight": "0.85", "eyeBlinkRight": "0", "symmetric": True}
    assert _center_on(page, node) >= 300, "a new node has room for its panel"
    page.screenshot(artifacts / "panel_blendshapes.png")
    # Queue as the Run button does (app.queuePrompt): the body the page's own fetch sends is what is checked.
    page.evaluate(CAPTURE)
    page.evaluate("app.queuePrompt(0, 1).catch(e => String(e))")
    page.wait_for("window.__editlabPosts.length > 0", timeout=30, what="the page to POST /prompt")
    body = page.evaluate("window.__editlabPosts[0]")
    (sent,) = [n for n in body["prompt"].values() if n["class_type"] == "EditLabBlendshapeEdit"]
    assert json.loads(sent["inputs"]["values"]) == {"jawOpen": 0.7, "eyeBlinkLeft": 0.4, "mouthSmileLeft": 0.85,
                                                    "mouthSmileRight": 0.85, "mouthFunnel": dragged}
    assert sent["inputs"]["symmetric"] is True
    assert sorted(sent["inputs"]) == ["intensity", "preset", "symmetric", "values"]  # the panel is not an input
    saved = body["extra_data"]["extra_pnginfo"]["workflow"]["nodes"]
    (wf,) = [n for n in saved if n["type"] == "EditLabBlendshapeEdit"]
    assert len(wf["widgets_values"]) == 4 and json.loads(wf["widgets_values"][1])["jawOpen"] == 0.7
    # Reset: every slider back to 0, values {} and the preset neutral.
    page.evaluate(f"(() => {{ [...{node}.__editlabBlendshapes.root.querySelectorAll('button')]"
                  f".find(b => b.textContent === 'reset').click(); return true; }})()")
    after = page.evaluate(f"(() => ({{values: {node}.widgets.find(w => w.name === 'values').value,"
                          f" jaw: {node}.__editlabBlendshapes.root"
                          f".querySelector('input[data-name=jawOpen]').value}}))()")
    assert after == {"values": "{}", "jaw": "0"}
    # A preset: its coefficients (the node's own PRESETS) become the values the sliders show.
    from editlab.models.expression.blendshapes import PRESETS

    loaded = page.evaluate(f"""(() => {{
      const root = {node}.__editlabBlendshapes.root, pick = root.querySelector('select');
      pick.value = 'laugh'; pick.dispatchEvent(new Event('change'));
      return {{values: JSON.parse({node}.widgets.find(w => w.name === 'values').value),
               jaw: root.querySelector('input[data-name=jawOpen]').value,
               preset: {node}.widgets.find(w => w.name === 'preset').value}};
    }})()""")
    assert loaded == {"values": PRESETS["laugh"], "jaw": str(PRESETS["laugh"]["jawOpen"]), "preset": "neutral"}


# -- panels after a run on the tiny models -------------------------------------------------------------------------
LISTEN = """(() => {
  const api = window.comfyAPI.api.api;
  if (!window.__panelRun) {
    window.__panelRun = {events: []};
    for (const kind of ['execution_success', 'execution_error', 'execution_interrupted'])
      api.addEventListener(kind, (e) => window.__panelRun.events.push({kind, detail: e.detail}));
  }
  window.__panelRun.events = [];
  return true;
})()"""

QUEUE = """(async (output) => {
  const api = window.comfyAPI.api.api;
  const p = await app.graphToPrompt();
  const res = await api.queuePrompt(0, {output, workflow: p.workflow});
  return res.prompt_id;
})"""


def _run(page, object_info, name: str, setup_js: str = "") -> None:
    """Open a shipped workflow from the templates route, optionally change the graph in the page, and run what the
    page would queue with the tiny models (the client's --tiny substitution) through the page's own api."""
    open_workflow(page, name)
    if setup_js:
        page.evaluate(setup_js)
    output = page.evaluate("app.graphToPrompt().then(p => p.output)")
    prompt = prepare_prompt(output, object_info, tiny="always")
    page.evaluate(LISTEN)
    page.evaluate(f"{QUEUE}({json.dumps(prompt)})")
    deadline, done = time.monotonic() + 240, None
    while time.monotonic() < deadline and not done:
        time.sleep(0.5)
        done = page.evaluate("window.__panelRun.events[0] || null")
    assert done, f"{name} did not finish in 240 s"
    assert done["kind"] == "execution_success", json.dumps(done["detail"])[:2000]


def _panel(page, node_type: str, what: str, timeout: float = 30) -> dict:
    """The run panel on the (first) node of ``node_type`` once it shows ``what`` (a CSS selector)."""
    node = f"app.graph.nodes.find(n => n.type === '{node_type}')"
    page.wait_for(f"!!({node}?.widgets?.find(w => w.name === 'editlab run panel')?.element"
                  f".querySelector('{what}'))", timeout=timeout, what=f"the {node_type} panel to show {what}")
    return node


SAE_FEATURES = """(() => {
  const g = app.graph;
  const find = (type) => g.nodes.find(n => n.type === type);
  const slot = (node, type) => node.outputs.findIndex(o => o.type === type);
  const loader = find('CheckpointLoaderSimple'), train = find('EditLabSAETrain'), dir = find('EditLabSAEDirection');
  const bottom = Math.max(...g.nodes.map(n => n.pos[1] + n.size[1])) + 120;  // below everything
  const f = LiteGraph.createNode('EditLabSAEFeatures'); f.pos = [loader.pos[0], bottom]; g.add(f);
  f.widgets.find(w => w.name === 'prompt').value = 'a smiling man in a park';
  loader.connect(slot(loader, 'CLIP'), f, 0);
  train.connect(slot(train, 'EDITLAB_SAE'), f, 1);
  dir.connect(slot(dir, 'EDITLAB_SAE_DIRECTION'), f, f.inputs.findIndex(i => i.name === 'direction'));
  const p = LiteGraph.createNode('PreviewImage'); p.pos = [f.pos[0] + 600, f.pos[1]]; g.add(p);
  f.connect(0, p, 0);
  return [f.inputs.map(i => i.link !== null), f.id];
})()"""


def test_sae_feature_view_shows_the_run(page, object_info, artifacts):
    _run(page, object_info, "saedit_sd35_slider", SAE_FEATURES)
    node = _panel(page, "EditLabSAEFeatures", "table.activations td")
    view = page.evaluate(f"""(() => {{
      const el = {node}.widgets.find(w => w.name === 'editlab run panel').element;
      return {{tokens: [...el.querySelectorAll('table.activations tr')].slice(1).map(r => r.cells[0].textContent),
               filled: [...el.querySelectorAll('table.activations td')]
                 .filter(td => td.textContent && td.cellIndex > 0).length,
               direction: [...el.querySelectorAll('table.direction tr')].slice(1).map(r => r.cells[0].textContent),
               id: el.dataset.panelId}};
    }})()""")
    data = page.evaluate(f"fetch('/editlab/panel/sae_features?id={view['id']}').then(r => r.json())")
    assert [r["token"] for r in data["tokens"]] == view["tokens"] and len(view["tokens"]) >= 4
    assert view["filled"] == sum(len([f for f in r["features"] if f["id"] in data["columns"][:32]])
                                 for r in data["tokens"])
    assert view["direction"] and view["direction"] == [f"#{f['id']}" for f in data["direction"]["features"][:24]]
    # The slider's panel: its direction's features and the activations of the tokens it received.
    slider = _panel(page, "EditLabSAESlider", "table.activations td")
    seen = page.evaluate(f"""(() => {{
      const el = {slider}.widgets.find(w => w.name === 'editlab run panel').element;
      return {{id: el.dataset.panelId, tokens: [...el.querySelectorAll('table.activations tr')].slice(1)
                                                 .map(r => r.cells[0].textContent),
               direction: [...el.querySelectorAll('table.direction tr')].slice(1).map(r => r.cells[0].textContent)}};
    }})()""")
    sdata = page.evaluate(f"fetch('/editlab/panel/sae_features?id={seen['id']}').then(r => r.json())")
    assert sdata["node"] == "slider" and sdata["word"] and sdata["positions"]
    assert seen["tokens"] == [r["token"] for r in sdata["tokens"]] and sdata["word"] in " ".join(seen["tokens"])
    assert seen["direction"] == [f"#{f['id']}" for f in sdata["direction"]["features"][:24]]
    assert _center_on(page, node, 0.9) >= 250, "the panel is given room for its table"
    page.screenshot(artifacts / "panel_sae_features.png")


def test_attention_map_panel_shows_one_map_per_word(page, object_info, artifacts):
    _run(page, object_info, "conceptsplit_two_concepts")
    node = _panel(page, "EditLabAttentionMaps", "figure img")
    shown = page.evaluate(f"""(async () => {{
      const el = {node}.widgets.find(w => w.name === 'editlab run panel').element;
      const figs = [...el.querySelectorAll('figure')];
      await Promise.all(figs.map(f => f.querySelector('img').decode().catch(() => null)));
      return {{words: figs.map(f => f.dataset.word), loaded: figs.map(f => f.querySelector('img').naturalWidth),
               widget: {node}.widgets.find(w => w.name === 'words').value}};
    }})()""")
    assert shown["words"] == [w.strip() for w in shown["widget"].split(",") if w.strip()]
    assert all(w > 0 for w in shown["loaded"])
    assert _center_on(page, node) >= 150, "the panel is given room for its maps"
    page.screenshot(artifacts / "panel_attention_maps.png")


def _judge_then_plan(body):
    """The LLM stand-in: judges iteration 0 weak and iteration 1 perfect, plans one rewrite, picks the first
    candidate."""
    from editlab.models.worldtoimage import judge as J

    system = body["messages"][0]["content"]
    if system == J.JUDGE_SYSTEM:
        _judge_then_plan.judged = getattr(_judge_then_plan, "judged", 0) + 1
        a = 3 if _judge_then_plan.judged == 1 else 10
        return {"alignment": a, "visible_keywords": ["zorblax", "desk", "lamp", "wooden"] if a == 10 else ["desk"],
                "reason": f"alignment {a}"}
    if system == J.PLAN_SYSTEM:
        return {"diagnosis": "understanding", "prompt": "a brass desk lamp with a green shade on a wooden desk",
                "queries": ["zorblax lamp"], "reason": "an unknown brand name"}
    return {"choice": 0, "reason": "first"}


def test_agent_history_panel_shows_every_iteration(page, object_info, artifacts):
    """The shipped Openverse workflow with loopback stand-ins for the LLM (judge and planner) and for Openverse:
    two iterations, the second with a rewritten prompt, a reference with its licence, and scores. (The authors'
    gated score without an aesthetic rating is -1.7 for the first image, 0 for the second: threshold -0.5 stops
    there.)"""
    from standins import ChatStandIn, Reply, StandIn, png_bytes

    with ChatStandIn(responder=_judge_then_plan) as llm, StandIn() as site:
        site.routes["/v1/images/"] = Reply(200, {"results": [
            {"url": site.url + "/lamp.png", "title": "Zorblax lamp", "license": "by-sa", "license_version": "4.0",
             "foreign_landing_url": "https://example.org/lamp"}]})
        site.routes["/lamp.png"] = Reply(200, png_bytes(48, 48, (20, 160, 40)), {"Content-Type": "image/png"})
        setup = """(() => {
          const node = (t) => app.graph.nodes.find(n => n.type === t);
          const set = (t, name, v) => { node(t).widgets.find(w => w.name === name).value = v; };
          set('EditLabLLM', 'base_url', %s);
          set('EditLabWebImageSearch', 'endpoint', %s);
          set('EditLabWebImageSearch', 'allow_loopback', true);
          set('EditLabWebImageSearch', 'use_cache', false);
          set('EditLabWorldToImage', 'threshold', -0.5);
          return true;
        })()""" % (json.dumps(llm.base_url), json.dumps(site.url + "/v1/images/"))
        _run(page, object_info, "worldtoimage_openverse", setup)
    node = _panel(page, "EditLabWorldToImage", ".card img")
    shown = page.evaluate(f"""(async () => {{
      const el = {node}.widgets.find(w => w.name === 'editlab run panel').element;
      const cards = [...el.querySelectorAll('.card')];
      await Promise.all(cards.map(c => c.querySelector('img').decode().catch(() => null)));
      return {{prompts: cards.map(c => c.querySelector('.prompt').textContent),
               scores: cards.map(c => c.querySelector('.scores').textContent),
               loaded: cards.map(c => c.querySelector('img').naturalWidth),
               best: cards.filter(c => c.classList.contains('best')).map(c => Number(c.dataset.iteration)),
               refs: cards.map(c => [...c.querySelectorAll('li')].map(li => li.textContent)),
               id: el.dataset.panelId}};
    }})()""")
    data = page.evaluate(f"fetch('/editlab/panel/agent_history?id={shown['id']}').then(r => r.json())")
    assert shown["prompts"] == ["a Zorblax desk lamp on a wooden desk",
                                "a brass desk lamp with a green shade on a wooden desk"]
    assert all(w > 0 for w in shown["loaded"]) and shown["best"] == [1] == [data["best"]]
    assert shown["refs"][0] == [] and len(shown["refs"][1]) == 1
    assert "Zorblax lamp" in shown["refs"][1][0] and "BY-SA 4.0" in shown["refs"][1][0] and \
        "openverse" in shown["refs"][1][0]
    for text, it in zip(shown["scores"], data["iterations"]):
        assert f"combined {it['scores']['combined']:.3f}" in text
    assert data["iterations"][1]["scores"]["combined"] > data["iterations"][0]["scores"]["combined"]
    assert _center_on(page, node, 0.9) >= 250, "the panel is given room for its iterations"
    page.screenshot(artifacts / "panel_agent_history.png")


def test_blendshape_panel_shows_the_face_it_was_measured_from(page, object_info, artifacts):
    _run(page, object_info, "expression_sliders")
    node = "app.graph.nodes.find(n => n.type === 'EditLabBlendshapeEdit')"
    page.wait_for(f"!!{node}.__editlabBlendshapes.root.querySelector('.face img')", timeout=30,
                  what="the face image in the Blendshape panel")
    shown = page.evaluate(f"""(async () => {{
      const root = {node}.__editlabBlendshapes.root;
      const img = root.querySelector('.face img'); await img.decode().catch(() => null);
      return {{width: img.naturalWidth,
               measured: [...root.querySelectorAll('.row.measured input')].map(i => i.dataset.name)}};
    }})()""")
    assert shown["width"] > 0
    assert shown["measured"], "the coefficients measured above 0.05 are highlighted"
    assert _center_on(page, node) >= 400, "the panel grows to show the face and the sliders"
    page.screenshot(artifacts / "panel_blendshapes_face.png")
    # Opened again, the workflow's nodes have the same ids: the last run's face is not shown on them, and the node
    # keeps the size the file gives it.
    again = open_workflow(page, "expression_sliders")
    (saved,) = [n for n in again["nodes"] if n["type"] == "EditLabBlendshapeEdit"]
    page.evaluate("new Promise(r => setTimeout(r, 500))")
    assert not page.evaluate(f"!!{node}.__editlabBlendshapes.root.querySelector('.face img')")
    assert page.evaluate(f"Array.from({node}.size)")[1] == saved["box"][3] - page.evaluate("LiteGraph.NODE_TITLE_HEIGHT")
