"""The web extension in the real ComfyUI front end, driven in headless Chromium over the DevTools protocol.

The page fixture (tests/browser/conftest.py) installs Debian's `chromium` where it is missing.
"""
import json

import pytest

pytestmark = pytest.mark.e2e


def test_blendshape_slider_writes_the_json_widget_and_is_not_saved(page):
    result = json.loads(page.evaluate("""(async () => {
      const node = LiteGraph.createNode('EditLabBlendshapeEdit'); app.graph.add(node);
      const w = (name) => node.widgets.find(x => x.name === name);
      w('coefficient').value = 'jawOpen'; w('coefficient value').callback(0.7, app.canvas, node);
      w('coefficient').value = 'mouthSmileLeft'; w('coefficient value').callback(1.7, app.canvas, node);
      const tiny = LiteGraph.createNode('EditLabTinyModels'); app.graph.add(tiny);
      const prompt = await app.graphToPrompt();
      const api = Object.values(prompt.output).find(n => n.class_type === 'EditLabBlendshapeEdit');
      const out = {values: w('values').value, saved: node.serialize().widgets_values,
                   api_inputs: api ? Object.keys(api.inputs).sort() : null, tiny_color: tiny.color};
      app.graph.remove(node); app.graph.remove(tiny);
      return JSON.stringify(out);
    })()"""))
    assert json.loads(result["values"]) == {"jawOpen": 0.7, "mouthSmileLeft": 1}  # clamped to [0, 1]
    assert len(result["saved"]) == 4  # preset, values, symmetric, intensity: the helper widgets are not saved
    assert result["api_inputs"] == ["intensity", "preset", "symmetric", "values"]
    assert result["tiny_color"] == "#5a3b1d"
