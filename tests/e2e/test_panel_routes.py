"""The panel routes on the live server: a real run's panel is served back; bad requests (unknown kinds and ids,
path-like ids and names, oversized queries, bodies, extra parameters) get a clear 4xx with a JSON error, and nothing
from outside the pack's in-memory panel data is ever served (no file contents, whatever the request names)."""
import http.client
import json
import urllib.parse

import pytest

pytestmark = pytest.mark.e2e


def _get(server, path: str, body: bytes | None = None, method: str = "GET"):
    """The exact path as given (no client-side normalisation of '..' or '%2F')."""
    host = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        return res.status, res.read(), res.getheader("Content-Type", "")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def face_panel(server, workflow_inputs):
    """A real panel: Face Blendshapes run on the example photo; its id from the run's ui output (the history)."""
    import random

    # A scale no other test uses: the host would otherwise answer from its cache, and a cached node's ui is not in
    # the new prompt's history.
    scale = round(random.uniform(0.9, 0.99), 4)
    prompt = {"0": {"class_type": "LoadImage", "inputs": {"image": "editlab_photo.png"}},
              "1": {"class_type": "ImageScaleBy", "inputs": {"image": ["0", 0], "upscale_method": "bilinear",
                                                              "scale_by": scale}},
              "2": {"class_type": "EditLabFaceBlendshapes", "inputs": {"image": ["1", 0], "face_index": 0,
                                                                        "allow_no_face": False}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    entry = server.client.wait(server.client.queue(prompt), timeout=300)
    (ref,) = entry["outputs"]["2"]["editlab_panel"]
    return ref


def test_a_runs_panel_is_served_as_published(server, face_panel):
    assert face_panel["kind"] == "face"
    for prefix in ("", "/api"):
        status, body, ctype = _get(server, f"{prefix}/editlab/panel/face?id={face_panel['id']}")
        assert status == 200 and ctype.startswith("application/json")
        data = json.loads(body)
        assert data["image"].startswith("data:image/png;base64,") and data["faces"] >= 1
        assert set(data["values"]) >= {"jawOpen", "mouthSmileLeft"}


def test_blendshape_constants_are_the_nodes_own(server):
    from editlab.models.expression.blendshapes import ARKIT_NAMES, PRESETS

    status, body, _ = _get(server, "/editlab/blendshapes")
    assert status == 200
    assert json.loads(body) == {"names": list(ARKIT_NAMES), "presets": PRESETS}
    assert _get(server, "/editlab/blendshapes?x=../../etc/passwd")[0] == 400


@pytest.mark.parametrize("path, status", [
    ("/editlab/panel/face?id=AAAAAAAAAAAAAAAA", 404),                   # well-formed, unknown
    ("/editlab/panel/nope?id=AAAAAAAAAAAAAAAA", 404),                   # unknown kind
    ("/editlab/panel/..%2F..%2Fetc?id=AAAA", 404),                      # path-like kind
    ("/editlab/panel/face?id=..%2F..%2F..%2Fetc%2Fpasswd", 400),        # path-like id
    ("/editlab/panel/face?id=../../../etc/passwd", 400),
    ("/editlab/panel/face?id=%2Fetc%2Fpasswd", 400),
    ("/editlab/panel/face?id=a.b", 400),
    ("/editlab/panel/face?id=" + "A" * 65, 400),                        # too long
    ("/editlab/panel/face", 400),                                       # no id
    ("/editlab/panel/face?id=AAAA&id=BBBB", 400),                        # two ids
    ("/editlab/panel/face?id=AAAA&file=/etc/passwd", 400),               # a parameter the route does not take
    ("/editlab/panel/face?id=" + "A" * 300, 413),                       # oversized query
    ("/editlab/panel/face?id=A&pad=" + "x" * 5000, 413),
])
def test_bad_requests_get_a_clear_4xx(server, path, status):
    got, body, ctype = _get(server, path)
    assert got == status, body[:300]
    if path.startswith("/editlab/panel/") and "/../" not in path:
        assert ctype.startswith("application/json") and json.loads(body)["error"]
    assert b"root:" not in body  # nothing of /etc/passwd, whatever was asked


def test_a_body_is_refused_and_other_methods_are_not_routes(server, face_panel):
    url = f"/editlab/panel/face?id={face_panel['id']}"
    assert _get(server, url, body=b"{}")[0] == 400
    assert _get(server, url, body=b"x" * 100_000)[0] == 413
    assert _get(server, url, body=b"{}", method="POST")[0] in (404, 405)
    # Another kind's route does not serve this id either.
    assert _get(server, f"/editlab/panel/sae_features?id={face_panel['id']}")[0] == 404
