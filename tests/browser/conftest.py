"""The browser tier: ComfyUI's real front end (the comfyui-frontend-package the host serves) in headless Chromium.

Chromium is Debian's package; ``scripts/ensure_chromium.sh`` installs it where it is missing (as root, or with
passwordless sudo). Only where installing is impossible are these tests skipped, with the reason; ``scripts/test.sh``
then says so in the run's last line.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from editlab.tests.browser.cdp import Page, ensure_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "out" / "test-artifacts" / "browser"
# Settings a first visit would otherwise show dialogs for: the templates browser that opens on a first start and the
# missing-models dialog (the test server has no real weights). Both would cover the graph in the screenshots.
# The minimap would sit over the graph's bottom-right corner too.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
                  "Comfy.Minimap.Visible": False}
# The "Introducing Nodes 2.0" banner is dismissed in the browser's local storage, not in a setting.
DISMISS_BANNER = "localStorage.setItem('vueNodesBannerDismissed', 'true');"


SKIPPED = []  # why the browser tier could not run, said again as the run's last line


@pytest.fixture(scope="session")
def chromium():
    path, why = ensure_chromium()
    if path is None:
        SKIPPED.append(f"browser tier SKIPPED: Chromium is missing and cannot be installed here ({why})")
        pytest.skip(SKIPPED[-1])
    return path


def pytest_unconfigure(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if SKIPPED and reporter is not None:
        reporter.write_line(SKIPPED[0])


@pytest.fixture(scope="session")
def page(server, chromium, tmp_path_factory):
    """The ComfyUI page of the session's server, once the front end has registered the pack's nodes."""
    for key, value in QUIET_SETTINGS.items():
        req = urllib.request.Request(f"{server.url}/settings/{key}", data=json.dumps(value).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
    p = Page(chromium, server.url, tmp_path_factory.mktemp("chromium"), init_script=DISMISS_BANNER)
    try:
        p.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                   "LiteGraph.registered_node_types['EditLabBlendshapeEdit'] && "
                   "app.extensions.some(e => e.name === 'editlab.core'))", timeout=120,
                   what="the front end to register EditLab's nodes and extension")
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
