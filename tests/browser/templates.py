"""Opening a shipped workflow the way ComfyUI's templates browser does, in the page (shared by the browser tests).

The templates browser lists a pack's workflows from ``/api/workflow_templates`` and opens one by fetching
``/api/workflow_templates/<pack>/<name>.json`` and calling ``app.loadGraphData(data, true, true, name,
{openSource: 'template'})`` (comfyui-frontend-package 1.32, ``useTemplateWorkflows``).
"""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
PACK = "editlab"  # the module name the host serves the templates under (the folder name in custom_nodes/)

OPEN = """(async (name) => {
  const res = await fetch('/api/workflow_templates/%(pack)s/' + name + '.json');
  if (!res.ok) return {status: res.status};
  const data = await res.json();
  await app.loadGraphData(data, true, true, name, {openSource: 'template'});
  await new Promise(r => setTimeout(r, 800));  // images, DOM widgets and sizes settle
  app.canvas.draw(true, true);
  const titleH = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = app.graph.nodes.map(n => ({
    id: n.id, type: n.type, title: n.title, registered: !!LiteGraph.registered_node_types[n.type],
    box: [n.pos[0], n.pos[1] - titleH, n.size[0], n.size[1] + titleH],
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value, type: w.type,
                                         saved: w.serialize !== false && w.options?.serialize !== false})),
  }));
  const groups = (app.graph.groups || app.graph._groups || []).map(g => ({title: g.title, box: Array.from(g._bounding || g.bounding)}));
  const ds = app.canvas.ds;
  const prompt = await app.graphToPrompt();
  return {status: res.status, nodes, groups, scale: ds.scale, offset: Array.from(ds.offset),
          canvas: [app.canvas.canvas.clientWidth, app.canvas.canvas.clientHeight], output: prompt.output};
})""" % {"pack": PACK}


def open_workflow(page, name: str) -> dict:
    """Open ``name`` from the templates route; return what the page made of it (nodes, widgets, groups, view,
    and what it would queue)."""
    return page.evaluate(f"{OPEN}({json.dumps(name)})")
