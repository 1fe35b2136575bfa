"""The web extension in the real ComfyUI front end, driven in headless Chromium over the DevTools protocol.

The page fixture (tests/browser/conftest.py) installs Debian's `chromium` where it is missing. The panels have
their own tests (test_panels.py).
"""
import json

import pytest

pytestmark = pytest.mark.e2e


def test_blendshape_panel_is_neither_saved_nor_queued_and_tiny_models_are_coloured(page):
    result = json.loads(page.evaluate("""(async () => {
      const node = LiteGraph.createNode('EditLabBlendshapeEdit'); app.graph.add(node);
      const tiny = LiteGraph.createNode('EditLabTinyModels'); app.graph.add(tiny);
      const prompt = await app.graphToPrompt();
      const api = prompt.output[String(node.id)];
      const out = {saved: node.serialize().widgets_values, widgets: node.widgets.map(w => w.name),
                   api_inputs: api ? Object.keys(api.inputs).sort() : null, tiny_color: tiny.color};
      app.graph.remove(node); app.graph.remove(tiny);
      return JSON.stringify(out);
    })()"""))
    assert "blendshape panel" in result["widgets"]
    assert result["saved"] == ["neutral", "{}", True, 1]  # preset, values, symmetric, intensity: no panel state
    assert result["api_inputs"] == ["intensity", "preset", "symmetric", "values"]
    assert result["tiny_color"] == "#5a3b1d"
