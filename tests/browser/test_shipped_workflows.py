"""Every shipped workflow opened as a user opens it: from the templates browser's own route, in the real front end.

The templates browser lists a pack's workflows from ``/api/workflow_templates`` and opens one by fetching
``/api/workflow_templates/<pack>/<name>.json`` and calling ``app.loadGraphData(data, true, true, name)``; this does
the same in headless Chromium, then reads back what the page made of the file: each widget's value (compared with
the API twin's input of the same name, and the real settings: image sizes, steps, ChronoEdit's area), node types the
page does not know, node boxes that overlap, groups, the
initial zoom, and console errors from the pack's scripts. A screenshot of each as opened is kept under
out/test-artifacts/browser/.
"""
import json
from pathlib import Path

import pytest

from editlab.tests.browser.templates import NAMES, PACK, open_workflow
from editlab.tests.unit.test_shipped_settings import wrong_settings

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
MIN_SCALE = 0.6  # below this LiteGraph draws nodes without their text ("low quality")
MENU_HEIGHT = 100  # the tabs bar, the Run toolbar and the "Nodes 2.0" banner cover this much of the canvas
ANNOTATIONS = ("Note", "MarkdownNote")
FRONTEND_ONLY_WIDGETS = {"control_after_generate", "upload"}

def _overlap(a, b):
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return w > 0 and h > 0


def _inside(inner, outer):
    return (inner[0] >= outer[0] and inner[1] >= outer[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


@pytest.fixture(scope="module")
def opened(page, artifacts):
    """name -> what the page made of the workflow (opened once each; the screenshots are taken here)."""
    results = {}
    for name in NAMES:
        since = len(page.console)
        state = open_workflow(page, name)
        state["errors"] = page.errors_from(f"/extensions/{PACK}/", since)
        state["missing_inputs"] = [m["url"] for m in page.errors_from("/view?type=input", since)]
        page.screenshot(artifacts / f"{name}.png")
        results[name] = state
    (artifacts / "console.json").write_text(json.dumps(page.console, indent=1))
    return results


def test_templates_route_lists_every_shipped_workflow(page):
    listed = page.evaluate("fetch('/api/workflow_templates').then(r => r.json())")
    assert sorted(listed.get(PACK, [])) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_as_shipped(name, opened):
    state = opened[name]
    assert state["status"] == 200, f"/api/workflow_templates/{PACK}/{name}.json answered {state['status']}"
    missing = sorted({n["type"] for n in state["nodes"] if not n["registered"]})
    assert not missing, f"node types the page does not know: {missing}"
    assert not state["errors"], f"console errors from the pack's scripts: {state['errors']}"
    assert not state["missing_inputs"], f"images the workflow loads are not in the server's input folder: " \
                                        f"{state['missing_inputs']}"


def _muted_node_inputs(name: str) -> dict:
    """{node id: {widget name: value}} of a workflow's muted nodes (an option the Note tells the user to switch on:
    shown and saved, never queued, so not in the API twin), named as the generator meant them, as the twin names the
    queued nodes' values."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    graph = make.WORKFLOWS[name]()
    return {str(n["id"]): {k: v for k, v in n["widgets"] if k not in (make.SEED_CONTROL, make.UPLOAD_BUTTON)}
            for n in graph.nodes if n["mode"] == make.MUTED}


@pytest.mark.parametrize("name", NAMES)
def test_every_widget_holds_its_api_twin_value(name, opened):
    """Each widget the page shows has the value of the API twin's input of the same name (a shifted
    widgets_values list fails here), and the seed controls are "fixed". A muted node (shown and saved, never
    queued) is checked against the values the generator named for it."""
    state = opened[name]
    twin = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    muted = _muted_node_inputs(name)
    checked, wrong = 0, []
    for node in state["nodes"]:
        if node["type"] in ANNOTATIONS:
            continue
        inputs = twin[str(node["id"])]["inputs"] if str(node["id"]) in twin else muted[str(node["id"])]
        shown = {w["name"] for w in node["widgets"]}
        for w in node["widgets"]:
            if w["name"] == "control_after_generate":
                if w["value"] != "fixed":
                    wrong.append(f"node {node['id']} ({node['type']}): control after generate = {w['value']!r}")
                continue
            if not w["saved"] or w["name"] in FRONTEND_ONLY_WIDGETS:
                continue
            checked += 1
            if w["name"] not in inputs:
                wrong.append(f"node {node['id']} ({node['type']}): widget {w['name']!r} = {w['value']!r} has no "
                             f"input in the API twin")
            elif w["value"] != inputs[w["name"]]:
                wrong.append(f"node {node['id']} ({node['type']}): widget {w['name']!r} = {w['value']!r}, "
                             f"the API twin says {inputs[w['name']]!r}")
        for key, value in inputs.items():
            if not isinstance(value, list) and key not in shown:
                wrong.append(f"node {node['id']} ({node['type']}): the API twin sets {key!r} but the page shows "
                             f"no such widget")
    assert not wrong, "\n".join(wrong)
    assert checked > 0


@pytest.mark.parametrize("name", NAMES)
def test_page_shows_the_real_settings(name, opened):
    """As the real front end loaded the file, the widgets hold the real settings (image sizes, steps, cfg,
    ChronoEdit's 921,600-pixel area, the try-on canvas height; written down in tests/unit/test_shipped_settings.py
    from the authors and the host's templates), not the dry run's 64 px and 4 steps: --tiny scales those down."""
    nodes = [(str(n["id"]), n["type"], {w["name"]: w["value"] for w in n["widgets"]})
             for n in opened[name]["nodes"] if n["type"] not in ANNOTATIONS]
    wrong = wrong_settings(name, nodes)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", NAMES)
def test_page_sends_the_api_twin(name, opened):
    """What the page would queue (app.graphToPrompt) is the API twin: widgets and links as the front end reads them."""
    twin = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}
    assert strip(opened[name]["output"]) == strip(twin)


@pytest.mark.parametrize("name", NAMES)
def test_no_node_covers_another(name, opened):
    nodes = opened[name]["nodes"]
    hits = [f"{a['id']} {a['type']} {a['box']} / {b['id']} {b['type']} {b['box']}"
            for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlap(a["box"], b["box"])]
    assert not hits, "overlapping node boxes (as sized by the page):\n" + "\n".join(hits)


@pytest.mark.parametrize("name", NAMES)
def test_groups_titles_and_initial_view(name, opened):
    state = opened[name]
    groups = state["groups"]
    assert groups and all(g["title"].strip() for g in groups), "every stage is a titled group"
    outside = [f"{n['id']} {n['type']}" for n in state["nodes"]
               if n["type"] not in ANNOTATIONS and not any(_inside(n["box"], g["box"]) for g in groups)]
    assert not outside, f"nodes in no group: {outside}"
    assert not [f"{a['title']} / {b['title']}" for i, a in enumerate(groups) for b in groups[i + 1:]
                if _overlap(a["box"], b["box"])], "groups overlap"
    notes = [n for n in state["nodes"] if n["type"] in ANNOTATIONS]
    assert len(notes) == 1, "one Note that says what the workflow does and which files go where"
    saved = json.loads((REPO / "workflows" / f"{name}.json").read_text())["extra"]["ds"]
    if abs(state["scale"] - saved["scale"]) < 1e-6:
        # Front ends that restore a template's saved view (1.32): it opens readable, the Note (the graph's top-left)
        # on screen below the menu bar.
        assert state["scale"] >= MIN_SCALE, f"opens at {state['scale']:.2f}: text is not drawn below {MIN_SCALE}"
        x, y = notes[0]["box"][:2]
        sx, sy = (x + state["offset"][0]) * state["scale"], (y + state["offset"][1]) * state["scale"]
        assert 0 <= sx < state["canvas"][0] / 2 and MENU_HEIGHT <= sy < state["canvas"][1] / 2, (sx, sy)
    else:
        # Newer front ends (1.49) fit a template to the view whatever it saved: then the whole graph is on screen.
        scale, (ox, oy), (cw, ch) = state["scale"], state["offset"], state["canvas"]
        off = [n["id"] for n in state["nodes"] for x, y, w, h in [n["box"]]
               if (x + ox) * scale < -1 or (y + oy) * scale < -1 or (x + w + ox) * scale > cw + 1
               or (y + h + oy) * scale > ch + 1]
        assert not off, f"fitted to the view at {scale:.2f}, yet nodes lie outside it: {off}"


# A card's picture is loaded as a blob: URL, beside the element that carries the card's test id.
OWN = """const own = (c) => {
    let el = c;
    while (el.parentElement &&
           el.parentElement.querySelectorAll('[data-testid^="template-workflow-"]').length === 1) el = el.parentElement;
    return [...el.querySelectorAll('img')];
  };"""

OPEN_BROWSER = """(async () => {
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  let nav = null;
  for (let i = 0; i < 60 && !nav; i++) {
    await sleep(250);
    nav = [...document.querySelectorAll('[role="dialog"] *')].find(
      el => el.children.length <= 2 && el.textContent.trim() === 'EditLab' && el.closest('nav, aside, ul, li, button, a'));
  }
  if (!nav) return {error: 'no EditLab category in the templates browser',
                    text: document.querySelector('[role="dialog"]')?.innerText?.slice(0, 2000)};
  (nav.closest('button, a, li') || nav).click();
  %(own)s
  let cards = [];
  for (let i = 0; i < 80; i++) {
    await sleep(250);
    cards = [...document.querySelectorAll('[data-testid^="template-workflow-"]')];
    const imgs = cards.flatMap(own);
    if (cards.length && imgs.length >= cards.length && imgs.every(img => img.complete)) break;
  }
  return {names: cards.map(c => c.dataset.testid.replace('template-workflow-', ''))};
})()""" % {"own": OWN}

# One card, in its own evaluation (each well inside the page connection's time-out). Pictures load when their card
# comes into view (LazyImage: an IntersectionObserver, then a fetch into a blob: URL) and are dropped when it leaves;
# on a busy machine that takes a while. So the card is looked up afresh (the grid may re-render it), scrolled to the
# middle of the view, and scrolled to again now and then, for up to 60 s.
CARD = """(async (name) => {
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  %(own)s
  const card = () => document.querySelector(`[data-testid="template-workflow-${name}"]`);
  const loaded = () => card() && own(card()).some(img => img.complete && img.naturalWidth > 0);
  for (let i = 0; i < 240 && !loaded(); i++) {
    if (i %% 20 === 0) card()?.scrollIntoView({block: 'center'});
    await sleep(250);
  }
  const c = card();
  const res = await fetch('/api/workflow_templates/%(pack)s/' + name + '.jpg');
  const attrs = c ? [c, ...c.querySelectorAll('*')].flatMap(
    el => ['title', 'aria-label', 'aria-description', 'data-description'].map(a => el.getAttribute(a) || '')) : [];
  return {name, text: c?.innerText || '', hidden: (c?.textContent || '') + ' ' + attrs.join(' '),
          served: res.ok && res.headers.get('content-type'),
          thumbnails: c ? own(c).map(img => ({src: img.src, ok: img.complete && img.naturalWidth > 0})) : []};
})"""  % {"own": OWN, "pack": PACK}


def test_templates_browser_shows_titles_descriptions_thumbnails_tour_first(page, opened, artifacts):
    cards = json.loads((REPO / "web" / "templates.json").read_text())
    opened_dialog = page.evaluate(OPEN_BROWSER)
    assert "names" in opened_dialog, opened_dialog
    seen = {"cards": [page.evaluate(f"{CARD}({json.dumps(name)})", timeout=90) for name in opened_dialog["names"]]}
    page.screenshot(artifacts / "templates_browser.png")
    for kind in ("keyDown", "keyUp"):  # close the dialog as a user would
        page.send("Input.dispatchKeyEvent", {"type": kind, "key": "Escape", "code": "Escape",
                                             "windowsVirtualKeyCode": 27})
    assert "cards" in seen, seen
    shown = [c for c in seen["cards"] if c["name"] in NAMES]
    assert [c["name"] for c in shown] == [c["name"] for c in cards], "the order of templates.json, the tour first"
    assert cards[0]["name"] == "editlab_tour"
    for card, want in zip(shown, cards):
        assert want["title"] in card["text"], (want["title"], card["text"])
        lead = want["description"].split(":")[0]
        # 1.32 prints the description on the card; 1.49's cards show the title only, and where the description is
        # kept at all it is in the card's hidden text or attributes
        if "Node graph" not in card["text"]:  # 1.49's cards carry this badge; 1.32's do not
            assert lead in card["text"], (want["description"], card["text"])
        assert card["served"] == "image/jpeg", card
        assert card["thumbnails"] and all(t["ok"] for t in card["thumbnails"]), card
