"""The web extension in the real ComfyUI front end, driven in headless Chromium over the DevTools protocol.

Needs Chromium (Debian's `chromium`); without it the test is skipped and says why.
"""
import json
import shutil
import subprocess
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium) - the front-end test cannot run here")
    import websocket

    from editlab.client.server import free_port

    port = free_port()
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                             f"--remote-debugging-port={port}", server.url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, target = time.monotonic() + 60, None
        while time.monotonic() < deadline and target is None:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                target = next((p for p in pages if p["type"] == "page" and server.url in p["url"]), None)
            except OSError:
                time.sleep(0.5)
        assert target, "Chromium did not open the ComfyUI page"
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60)
        counter = [0]

        def evaluate(expression):
            counter[0] += 1
            ws.send(json.dumps({"id": counter[0], "method": "Runtime.evaluate",
                                "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == counter[0]:
                    result = message["result"]
                    assert "exceptionDetails" not in result, result["exceptionDetails"]
                    return result["result"].get("value")

        deadline = time.monotonic() + 90
        while not evaluate("!!(window.LiteGraph && LiteGraph.registered_node_types['EditLabBlendshapeEdit'] "
                           "&& window.app && app.extensions.some(e => e.name === 'editlab.core'))"):
            assert time.monotonic() < deadline, "the front end never registered EditLab's nodes and extension"
            time.sleep(0.5)
        yield evaluate
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_blendshape_slider_writes_the_json_widget_and_is_not_saved(page):
    result = json.loads(page("""(async () => {
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
