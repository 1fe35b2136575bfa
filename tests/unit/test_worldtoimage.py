"""World-To-Image without ComfyUI: keywords, the local library, the four web adapters against loopback stand-ins
answering in each API's format (with the disk cache), the score formulas by hand, and the agent loop against a
scripted stand-in LLM/VLM: the calls it makes, keep-best, early stop, the history, refusals, determinism."""
import json

import pytest
from PIL import Image
from standins import ChatStandIn, Reply, StandIn, png_bytes

from editlab.models.fetch import FetchLimits
from editlab.models.llm import LLMClient, LLMConfig
from editlab.models.worldtoimage import judge as J
from editlab.models.worldtoimage.agent import AgentSettings, run_agent
from editlab.models.worldtoimage.keywords import coverage, keywords
from editlab.models.worldtoimage.library import ImageLibrary
from editlab.models.worldtoimage.scoring import Score, combine
from editlab.models.worldtoimage.sources import LibrarySource, SourceError, WebImageSource

LIMITS = FetchLimits(connect_timeout=2, read_timeout=2, total_timeout=5)  # stand-ins: allow_loopback=True


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    from editlab.models.llm import client

    monkeypatch.setattr(client, "RETRY_PAUSE", 0.0)


def test_keywords_and_coverage():
    assert keywords("A photo of the Zorblax lamp on a wooden desk, 4k") == ["zorblax", "lamp", "wooden", "desk"]
    assert coverage(["lamp", "desk"], "a lamp and a chair") == 0.5


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "red_bus_london.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / "x1.png")
    (folder / "x1.txt").write_text("a blue double decker bus in London at night")
    (folder / "x1.licence.txt").write_text("CC BY 4.0\n")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(folder / "tree.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_library_captions_licence_and_ranking(library):
    lib = ImageLibrary(str(library))
    assert sorted(e.name for e in lib.entries) == ["red_bus_london.png", "tree.png", "x1.png"]
    found = lib.search("double decker bus London")
    assert [c.url for c in found] == ["file:x1.png", "file:red_bus_london.png"]  # 4 hits, then 2
    assert found[0].licence == "CC BY 4.0" and found[0].title.startswith("a blue double decker")
    assert found[1].licence == "local file" and found[1].title == "red bus london"
    assert lib.search("submarine") == []
    img = LibrarySource(lib).load(found[0])
    assert img.getpixel((0, 0)) == (0, 0, 255)


OPENVERSE = {"result_count": 2, "page_count": 1, "results": [
    {"id": "a", "title": "Zorblax lamp", "url": "{base}/img/a.png", "license": "by", "license_version": "2.0",
     "foreign_landing_url": "https://example.org/a", "creator": "Ann"},
    {"id": "b", "title": "Other", "url": "{base}/img/b.png", "license": "cc0", "license_version": "1.0",
     "foreign_landing_url": "https://example.org/b", "creator": "Bob"}]}
WIKIMEDIA = {"batchcomplete": "", "query": {"pages": {
    "22": {"pageid": 22, "ns": 6, "title": "File:Lamp b.jpg", "index": 2,
           "imageinfo": [{"url": "{base}/img/b.png", "descriptionurl": "https://commons.example/b",
                          "extmetadata": {"LicenseShortName": {"value": "CC BY-SA 4.0"}}}]},
    "11": {"pageid": 11, "ns": 6, "title": "File:Lamp a.jpg", "index": 1,
           "imageinfo": [{"url": "{base}/img/big.png", "thumburl": "{base}/img/a.png",
                          "descriptionurl": "https://commons.example/a",
                          "extmetadata": {"LicenseShortName": {"value": "Public domain"},
                                          "Artist": {"value": "Cy"}}}]}}}}
SEARXNG = {"query": "lamp", "number_of_results": 1, "results": [
    {"url": "https://page.example/a", "title": "A lamp", "img_src": "{base}/img/a.png", "engine": "bing images",
     "thumbnail_src": "{base}/img/t.png"}, {"url": "https://page.example/n", "title": "no image"}]}
CUSTOM = {"items": [{"image": "{base}/img/a.png", "caption": "custom lamp", "licence": "MIT-0"}]}


def _fill(obj, base):
    return json.loads(json.dumps(obj).replace("{base}", base))


@pytest.mark.parametrize("service, answer, path, first", [
    ("openverse", OPENVERSE, "/v1/images/", ("Zorblax lamp", "BY 2.0", "openverse", "https://example.org/a")),
    ("wikimedia_commons", WIKIMEDIA, "/w/api.php",
     ("File:Lamp a.jpg", "Public domain", "wikimedia_commons", "https://commons.example/a")),
    ("searxng", SEARXNG, "/search", ("A lamp", "unknown (via SearxNG)", "searxng:bing images",
                                     "https://page.example/a")),
    ("custom_json", CUSTOM, "/api/find", ("custom lamp", "MIT-0", "custom:127.0.0.1", "")),
])
def test_web_adapters_and_cache(tmp_path, service, answer, path, first):
    with StandIn() as site:
        site.routes[path] = Reply(200, _fill(answer, site.url))
        site.routes["/img/a.png"] = Reply(200, png_bytes(24, 12), {"Content-Type": "image/png"})
        endpoint = {"openverse": site.url + "/v1/images/", "wikimedia_commons": site.url + "/w/api.php",
                    "searxng": site.url, "custom_json": site.url + "/api/find?q={query}&n={count}"}[service]
        src = WebImageSource(service, endpoint, LIMITS, str(tmp_path / "cache"), allow_loopback=True)
        found = src.search("zorblax lamp", 5)
        assert (found[0].title, found[0].licence, found[0].source, found[0].page) == first
        assert found[0].url == site.url + "/img/a.png"
        req = site.requests[0]["path"]
        assert "zorblax" in req and (service != "searxng" or "format=json" in req and "categories=images" in req)
        img = src.load(found[0])
        assert img.size == (24, 12)
        n = len(site.requests)
        again = WebImageSource(service, endpoint, LIMITS, str(tmp_path / "cache"), allow_loopback=True)
        assert again.search("zorblax lamp", 5) == found and again.load(found[0]).size == (24, 12)
        assert len(site.requests) == n  # both from the disk cache
        record = json.loads(next((tmp_path / "cache" / "images").glob("*.json")).read_text())
        assert record["url"] == found[0].url and record["licence"] == first[1]


def test_protocol_relative_image_urls_become_https():
    from editlab.models.worldtoimage.sources import parse_results

    found = parse_results("searxng", {"results": [{"img_src": "//upload.example.org/a.jpg", "title": "a"}]}, 5)
    assert found[0].url == "https://upload.example.org/a.jpg"


def test_unreachable_source_is_a_source_error(tmp_path):
    with StandIn() as site:
        port = site.port
    src = WebImageSource("openverse", f"http://127.0.0.1:{port}/v1/images/", LIMITS, str(tmp_path),
                         allow_loopback=True)
    with pytest.raises(SourceError, match="connection failed"):
        src.search("lamp")


def _authors_by_hand(clip, aesthetic=None, hpsv2=0.0):
    """The World-To-Image authors' _combine_scores (their CLIP + aesthetic branch), written out here:
    hpsv2 + 0.5 * min(20 * clip - 5.6, 0) + 0.25 * aesthetic if clip > 0.28 else the same without the last term."""
    penalty = 20.0 * clip - 5.6
    if penalty > 0:
        penalty = 0.0
    value = hpsv2 + 0.5 * penalty
    if aesthetic is not None and clip > 0.28:
        value = value + 0.25 * aesthetic
    return value


@pytest.mark.parametrize("clip, aesthetic, hpsv2, expected", [
    (0.20, 6.0, None, -0.8),            # below the kink: 0.5 * (4.0 - 5.6), the gate closed
    (0.279, 6.0, None, -0.01),          # just below: 0.5 * (5.58 - 5.6)
    (0.281, 6.0, None, 1.5),            # just above: no penalty, 0.25 * 6 counted
    (0.35, 6.0, 0.27, 1.77),            # 0.27 + 0 + 1.5
    (0.35, None, None, 0.0),            # no aesthetic: flat above the gate
    (0.10, 9.0, 0.25, 0.25 - 1.8),      # aesthetic ignored under the gate
])
def test_authors_formula_against_their_combination_written_out(clip, aesthetic, hpsv2, expected):
    s = Score("clip", clip=clip, aesthetic=aesthetic, hpsv2=hpsv2)
    assert combine(s) == pytest.approx(expected, abs=1e-9)
    assert combine(s, "authors_gated") == pytest.approx(_authors_by_hand(clip, aesthetic, hpsv2 or 0.0), abs=1e-9)


def test_judge_substitute_and_the_other_formulas_by_hand():
    s = Score("vlm", alignment=0.7, coverage=1.0, aesthetic=6.0)  # s = 0.04 * (7 + 10) / 2 = 0.34, above the gate
    assert combine(s) == pytest.approx(0.25 * 6.0)
    s = Score("vlm", alignment=0.5, coverage=0.5, aesthetic=6.0)  # s = 0.2: penalty 0.5 * (4 - 5.6), no aesthetic
    assert combine(s) == pytest.approx(-0.8)
    assert combine(s, "linear_gated") == pytest.approx(0.2 - 0.8)
    assert combine(Score("clip", clip=0.30, aesthetic=6.0), "linear_gated") == pytest.approx(0.36)
    assert combine(Score("vlm", alignment=0.7, coverage=1.0), "mean") == pytest.approx(0.85)


# -- the agent ------------------------------------------------------------------------------------------------------

def fake_generate(prompt, refs, seed):
    """A deterministic stand-in generator: colour from the prompt's length and the references' mean colour."""
    r = (len(prompt) * 7 + seed) % 256
    g = int(sum(im.getpixel((0, 0))[1] for im in refs) / max(len(refs), 1))
    im = Image.new("RGB", (16, 16), (r, g, 40 * len(refs)))
    return im, im


class Script:
    """A scripted VLM/LLM: judge alignments per call, plans per iteration, picks candidate 1."""

    def __init__(self, alignments, plans):
        self.alignments, self.plans, self.kinds = list(alignments), list(plans), []

    def __call__(self, body):
        system = body["messages"][0]["content"]
        if system == J.JUDGE_SYSTEM:
            self.kinds.append("judge")
            a = self.alignments.pop(0)
            return {"alignment": a, "visible_keywords": ["lamp"] if a < 9 else ["zorblax", "lamp", "desk"],
                    "reason": f"alignment {a}"}
        if system == J.PLAN_SYSTEM:
            self.kinds.append("plan")
            return self.plans.pop(0)
        self.kinds.append("pick")
        return {"choice": 1, "reason": "second looks right"}


def _client(standin, **kw):
    return LLMClient(LLMConfig(base_url=standin.base_url, model="stand-in", timeout=3, max_retries=1, **kw))


def _vlm_scorer(client):
    def score(image, prompt, keys):
        s = J.judge(client, image, prompt, keys, aesthetic=False)
        s.combined = combine(s)
        return s
    return score


PROMPT = "a Zorblax lamp on a desk"
PLANS = [{"diagnosis": "understanding", "prompt": "a tall brass lamp with a green glass shade on a desk",
          "queries": ["zorblax lamp"], "reason": "Zorblax is a brand"},
         {"diagnosis": "rendering", "prompt": "a tall brass desk lamp, green glass shade, wooden desk",
          "queries": ["brass lamp green shade"], "reason": "sharper"}]


def _web(site, tmp_path):
    site.routes["/v1/images/"] = Reply(200, _fill(OPENVERSE, site.url))
    site.routes["/img/a.png"] = Reply(200, png_bytes(color=(10, 100, 10)), {"Content-Type": "image/png"})
    site.routes["/img/b.png"] = Reply(200, "<html>a page, not an image</html>", {"Content-Type": "text/html"})
    return WebImageSource("openverse", site.url + "/v1/images/", LIMITS, str(tmp_path / "cache"), use_cache=False,
                          allow_loopback=True)


def test_agent_with_llm_calls_keeps_best_and_stops_at_threshold(tmp_path):
    script = Script(alignments=[3, 6, 10], plans=list(PLANS))
    with ChatStandIn(responder=script) as llm_site, StandIn() as site:
        client = _client(llm_site)
        result = run_agent(PROMPT, fake_generate, _vlm_scorer(client), [_web(site, tmp_path)],
                           AgentSettings(iterations=5, threshold=0.0, seed=3), llm=client)
    # iteration 0: judge; 1: plan (understanding), pick (2 candidates), judge; 2: plan (rendering: no retrieval),
    # judge (s = 0.04*(10+10)/2 = 0.40 > 0.28: the authors' formula gives 0 >= 0: stop before iterations 3 and 4)
    assert script.kinds == ["judge", "plan", "pick", "judge", "plan", "judge"]
    h = result.history
    assert h["stopped"] == "threshold" and len(h["iterations"]) == 3 and len(result.images) == 3
    assert h["best"] == 2 and result.best == 2 and h["best_score"] == pytest.approx(0.0)
    assert result.final_prompt == PLANS[1]["prompt"] == h["iterations"][2]["prompt"]
    it1 = h["iterations"][1]
    assert it1["diagnosis"] == "understanding" and it1["queries"] == ["zorblax lamp"] and it1["seed"] == 3
    # the LLM picked candidate 1 (b.png), which is HTML: refused with the reason, the loop took a.png instead
    assert it1["refused"][0]["url"].endswith("/img/b.png") and "not an image" in it1["refused"][0]["reason"]
    assert [(r["url"].rsplit("/", 1)[1], r["licence"], r["source"]) for r in it1["references"]] == \
        [("a.png", "BY 2.0", "openverse")]
    # the second plan says rendering: its query is not searched, the image comes from the rewritten prompt alone
    it2 = h["iterations"][2]
    assert it1["action"] == "prompt_and_retrieval" and it2["action"] == "prompt_only"
    assert it2["queries"] == [] and it2["references"] == [] and it2["refused"] == []
    s0 = h["iterations"][0]["scores"]
    assert s0["alignment"] == 0.3 and s0["coverage"] == pytest.approx(1 / 3) and \
        s0["missing_keywords"] == ["zorblax", "desk"]
    assert s0["combined"] == pytest.approx(_authors_by_hand(0.04 * (3 + 10 / 3) / 2), abs=1e-6)
    json.dumps(h)  # JSON as is


def test_agent_keeps_the_best_without_early_stop():
    script = Script(alignments=[2, 8, 5], plans=[{"prompt": "p1", "queries": []}, {"prompt": "p2", "queries": []}])
    with ChatStandIn(responder=script) as llm_site:
        client = _client(llm_site)
        result = run_agent(PROMPT, fake_generate, _vlm_scorer(client), [], AgentSettings(iterations=3, threshold=9),
                           llm=client)
    h = result.history
    assert h["stopped"] == "iterations" and h["best"] == 1 and result.final_prompt == "p1"
    assert [it["scores"]["alignment"] for it in h["iterations"]] == [0.2, 0.8, 0.5]


@pytest.mark.parametrize("diagnosis", ["rendering", "understanding"])
def test_the_diagnosis_decides_the_next_action(library, diagnosis):
    """The same scripted plan but for its diagnosis: rendering rewrites the prompt only (no search, no references
    reach the generator); understanding searches the library and generates with what it found."""
    searched, generated = [], []

    class Watched(LibrarySource):
        def search(self, query, limit=5):
            searched.append(query)
            return super().search(query, limit)

    def generate(prompt, refs, seed):
        generated.append((prompt, len(refs)))
        return fake_generate(prompt, refs, seed)

    plan = {"diagnosis": diagnosis, "prompt": "a red double-decker bus in the rain", "queries": ["london bus"],
            "reason": "scripted"}
    script = Script(alignments=[3, 3], plans=[plan])
    with ChatStandIn(responder=script) as llm_site:
        client = _client(llm_site)
        result = run_agent("a London bus in the rain", generate, _vlm_scorer(client),
                           [Watched(ImageLibrary(str(library)))], AgentSettings(iterations=2, threshold=9), llm=client)
    it1 = result.history["iterations"][1]
    assert it1["diagnosis"] == diagnosis and generated[1][0] == plan["prompt"]
    if diagnosis == "rendering":
        assert searched == [] and generated[1][1] == 0 and it1["action"] == "prompt_only"
        assert it1["queries"] == [] and it1["references"] == []
    else:
        assert searched == ["london bus"] and generated[1][1] == 1 and it1["action"] == "prompt_and_retrieval"
        assert len(it1["references"]) == 1 and it1["references"][0]["query"] == "london bus"


def test_agent_without_llm_uses_keywords_and_says_what_it_skipped(library):
    calls = []

    def generate(prompt, refs, seed):
        calls.append((prompt, [im.getpixel((0, 0)) for im in refs], seed))
        return fake_generate(prompt, refs, seed)

    result = run_agent("a London bus in the rain", generate, None, [LibrarySource(ImageLibrary(str(library)))],
                       AgentSettings(iterations=3, seed=7))
    h = result.history
    assert any("no LLM" in s for s in h["skipped"]) and any("no scorer" in s for s in h["skipped"])
    assert [it["queries"] for it in h["iterations"]] == [[], ["london bus"], ["bus rain"]]
    assert calls[0] == ("a London bus in the rain", [], 7)
    # "london bus": both captions hold both words, the tie goes by file name: red_bus_london.png; then "bus rain":
    # the best hit not used yet: x1.png
    assert [r["url"] for r in h["iterations"][1]["references"]] == ["file:red_bus_london.png"]
    assert [r["url"] for r in h["iterations"][2]["references"]] == ["file:x1.png"]
    assert calls[1][1] == [(255, 0, 0)] and calls[2][1] == [(0, 0, 255)]
    assert h["best"] == 0 and h["iterations"][0]["scores"] is None and h["llm"] is None


def test_llm_failure_falls_back_to_keywords_and_is_recorded(library):
    with ChatStandIn([Reply(500, {"error": "down"})]) as llm_site:
        client = _client(llm_site)
        result = run_agent("a London bus", fake_generate, None, [LibrarySource(ImageLibrary(str(library)))],
                           AgentSettings(iterations=2), llm=client)
    it1 = result.history["iterations"][1]
    assert "LLM planning failed, keyword fallback" in it1["notes"][0] and "HTTP 500" in it1["notes"][0]
    assert it1["queries"] == ["london bus"] and it1["references"]


def test_same_seed_library_and_script_give_the_same_history_bit_for_bit(library, tmp_path):
    def once(seed):
        script = Script(alignments=[3, 6, 7], plans=list(PLANS))
        with ChatStandIn(responder=script) as llm_site, StandIn() as site:
            client = _client(llm_site)
            sources = [LibrarySource(ImageLibrary(str(library))), _web(site, tmp_path)]
            result = run_agent(PROMPT, fake_generate, _vlm_scorer(client), sources,
                               AgentSettings(iterations=3, threshold=2.0, seed=seed), llm=client)
        text = json.dumps(result.history, sort_keys=True)
        # the stand-ins listen on new ports each run: the one thing that differs, masked
        text = text.replace(site.url, "<site>").replace(llm_site.url, "<llm>")
        return text, [im.tobytes() for im in result.images]

    a, b, c = once(1), once(1), once(2)
    assert a == b
    assert a[0] != c[0]  # the seed is in the history: a different run is told apart


def test_without_llm_the_scorer_still_ranks_queries_follow_missing_keywords_and_stop_early(library):
    """No LLM, a scorer: keyword queries start from the keywords the scorer missed; keep-best and the threshold work."""
    values = iter([0.1, 0.5, 0.3])

    def score(image, prompt, keys):
        s = Score("vlm", alignment=0.5, coverage=0.5, missing_keywords=["rain", "london"])
        s.combined = next(values)
        return s

    result = run_agent("a London bus in the rain", fake_generate, score, [LibrarySource(ImageLibrary(str(library)))],
                       AgentSettings(iterations=3, threshold=0.45))
    h = result.history
    assert [it["queries"] for it in h["iterations"]] == [[], ["rain london"]]
    assert h["stopped"] == "threshold" and h["best"] == 1 and len(result.images) == 2
    assert [it["scores"]["combined"] for it in h["iterations"]] == [0.1, 0.5]
    assert any("no LLM" in s for s in h["skipped"]) and not any("no scorer" in s for s in h["skipped"])


# -- issue 22: malformed answers are recorded refusals, the run goes on ----------------------------------------------

@pytest.mark.parametrize("service, data, why", [
    ("openverse", [{"url": "http://x/a.png"}], "a JSON list where an object was expected"),
    ("openverse", {"results": "many"}, "'results' in the answer is a str"),
    ("searxng", "text", "a JSON str where an object was expected"),
    ("wikimedia_commons", 42, "a JSON int where an object was expected"),
    ("custom_json", 3.5, "a JSON float where a list or an object was expected"),
    ("custom_json", {"data": []}, "no list under results, items or images"),
])
def test_an_answer_of_the_wrong_shape_is_a_source_error(service, data, why):
    from editlab.models.worldtoimage.sources import parse_results

    with pytest.raises(SourceError, match=why):
        parse_results(service, data, 5, "http://127.0.0.1:1/s?q={query}")


@pytest.mark.parametrize("service, data", [
    ("openverse", {"results": [1, None, [], {"url": 7}, {"url": "http://x/a.png", "title": ["t"], "license": {}}]}),
    ("searxng", {"results": [{"img_src": {"a": 1}}, {"img_src": "http://x/a.png", "engine": 5}]}),
    ("wikimedia_commons", {"query": {"pages": {"1": {"index": "first", "imageinfo": {"url": "http://x/b.png"}},
                                               "2": {"index": 2, "imageinfo": ["nope"]},
                                               "3": {"index": None, "imageinfo": [{"url": "http://x/a.png",
                                                                                   "extmetadata": []}]},
                                               "4": "not a page"}}}),
    ("wikimedia_commons", {"query": {"pages": [1, 2]}}),
    ("custom_json", [{"image": "http://x/a.png", "caption": 3}, "str", 4]),
])
def test_odd_fields_are_skipped_never_an_exception(service, data):
    from editlab.models.worldtoimage.sources import parse_results

    found = parse_results(service, data, 5, "http://127.0.0.1:1/s?q={query}")
    assert all(c.url.startswith("http://x/") for c in found)


def test_malformed_answers_are_recorded_and_the_run_goes_on(tmp_path):
    """A 100,000-deep JSON, a list where an object is expected, a header trickle, an image URL on another loopback
    port (ComfyUI's own /api/view): each a refusal in the history, within its deadline; the good candidate that
    follows is used."""
    import time

    limits = FetchLimits(connect_timeout=1, read_timeout=1, total_timeout=1)
    with StandIn() as deep, StandIn() as listy, StandIn() as good, StandIn() as comfy:
        deep.routes["/s"] = Reply(200, "[" * 100_000, {"Content-Type": "application/json"})
        listy.routes["/v1/images/"] = Reply(200, [{"url": listy.url + "/a.png"}])
        good.routes["/s"] = Reply(200, {"items": [
            {"url": f"{comfy.url}/api/view?filename=secret.png&type=output", "title": "comfy's own output"},
            {"url": good.url + "/trickle.png", "title": "slow"},
            {"url": good.url + "/ok.png", "title": "ok", "licence": "CC0"}]})
        good.routes["/trickle.png"] = Reply(header_trickle=0.4)
        good.routes["/ok.png"] = Reply(200, png_bytes(color=(0, 200, 0)), {"Content-Type": "image/png"})
        comfy.routes["*"] = Reply(200, png_bytes(), {"Content-Type": "image/png"})
        sources = [WebImageSource("custom_json", deep.url + "/s?q={query}", limits, None, False, allow_loopback=True),
                   WebImageSource("openverse", listy.url + "/v1/images/", limits, None, False, allow_loopback=True),
                   WebImageSource("custom_json", good.url + "/s?q={query}", limits, None, False,
                                  allow_loopback=True)]
        t = time.monotonic()
        result = run_agent(PROMPT, fake_generate, None, sources, AgentSettings(iterations=2, candidates=3))
        took = time.monotonic() - t
        assert comfy.requests == []
    step = result.history["iterations"][1]
    reasons = [r["reason"] for r in step["refused"]]
    assert len(reasons) == 4, reasons
    assert "nested deeper than 64 levels" in reasons[0]
    assert "a JSON list where an object was expected" in reasons[1]
    assert "loopback is allowed only for the configured endpoint's own host and port" in reasons[2]
    assert "total time limit of 1 s" in reasons[3]
    assert [r["title"] for r in step["references"]] == ["ok"]
    assert took < 5, took
