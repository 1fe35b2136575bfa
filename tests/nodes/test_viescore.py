"""EditLabVIEScore against a loopback stand-in VLM: what it is shown, how its answers are parsed, SC = min of the two
consistency ratings, PQ = min of the two quality ratings, overall = sqrt(SC * PQ) (by hand), malformed answers
retried then a clear error."""
import json
import math

import pytest
import torch
from standins import ChatStandIn, Reply, chat_completion


@pytest.fixture(autouse=True)
def fast(comfy_host, monkeypatch):
    from editlab.models.llm import client

    monkeypatch.setattr(client, "RETRY_PAUSE", 0.0)


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from editlab.nodes import llm

    return llm


def llm_of(nodes, site, retries=2, vision=True):
    return nodes.EditLabLLM.execute(base_url=site.base_url, model="judge", api_key_env="", temperature=0.0,
                                    timeout=5.0, max_retries=retries, vision=vision).result[0]


def images(n=1, value=0.5):
    return torch.full((n, 32, 32, 3), value)


def by_kind(sc_answers, pq_answers):
    """SC requests carry two images, PQ requests one: answer each from its own script."""
    def respond(body):
        parts = body["messages"][1]["content"]
        n_images = sum(p["type"] == "image_url" for p in parts)
        return (sc_answers if n_images == 2 else pq_answers).pop(0)
    return respond


def test_scores_parsed_and_combined_by_the_protocol(nodes):
    sc = ['{"scores": [8, 6], "reasoning": "mostly blue; the cup moved"}']
    pq = ['```json\n{"scores": [7, 9.5], "reasoning": "natural light"}\n```']
    with ChatStandIn(responder=by_kind(sc, pq)) as site:
        out = nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site), instruction="make the cup blue",
                                            source_image=images(), edited_image=images(value=0.6)).result
        chats = site.chats()
    s, p, overall, reasons, text = out
    assert (s, p) == (6.0, 7.0)
    assert overall == pytest.approx(math.sqrt(42.0)) == pytest.approx(6.480741)
    assert "the cup moved" in reasons and "natural light" in reasons
    record = json.loads(text)
    assert record["pairs"][0]["sc_scores"] == [8.0, 6.0] and record["pairs"][0]["pq_scores"] == [7.0, 9.5]
    sc_req = chats[0]["body"]["messages"][1]["content"]
    assert "make the cup blue" in sc_req[0]["text"] and [p["type"] for p in sc_req] == ["text", "image_url",
                                                                                          "image_url"]
    assert [p["type"] for p in chats[1]["body"]["messages"][1]["content"]] == ["text", "image_url"]


def test_a_batch_gives_means_and_each_pair(nodes):
    sc = ['{"scores": [10, 4]}', '{"scores": [2, 9]}']
    pq = ['{"scores": [9, 9]}', '{"scores": [8, 1]}']
    with ChatStandIn(responder=by_kind(sc, pq)) as site:
        s, p, overall, _, text = nodes.EditLabVIEScore.execute(
            llm=llm_of(nodes, site), instruction="x", source_image=images(), edited_image=images(2)).result
    assert s == pytest.approx((4 + 2) / 2) and p == pytest.approx((9 + 1) / 2)
    assert overall == pytest.approx((math.sqrt(4 * 9) + math.sqrt(2 * 1)) / 2)
    assert len(json.loads(text)["pairs"]) == 2


@pytest.mark.parametrize("bad", ['{"scores": [11, 3]}', '{"scores": [5]}', '{"scores": ["high", 3]}',
                                 "I would rate it 7/10", '{"score": 7}'])
def test_malformed_answer_is_retried_then_used(nodes, bad):
    sc = [bad, '{"scores": [5, 5]}']
    pq = ['{"scores": [5, 5]}']
    with ChatStandIn(responder=by_kind(sc, pq)) as site:
        out = nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site), instruction="x", source_image=images(),
                                            edited_image=images()).result
        assert site.calls == 3  # SC twice, PQ once
    assert out[2] == pytest.approx(5.0)


def test_malformed_every_time_is_a_clear_error(nodes):
    with ChatStandIn(['{"scores": [42, 3]}']) as site:
        with pytest.raises(RuntimeError, match=r"VIEScore: the judge gave no usable answer for image 0: .*"
                                               r"after 3 attempt\(s\): malformed answer \(score 42 is not a number "
                                               r"from 0 to 10\)"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site), instruction="x", source_image=images(),
                                          edited_image=images())
        assert site.calls == 3


def test_server_error_then_clear_error(nodes):
    with ChatStandIn([Reply(503, {"error": "busy"})]) as site:
        with pytest.raises(RuntimeError, match=r"HTTP 503 \(busy\); HTTP 503 \(busy\)"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site, retries=1), instruction="x",
                                          source_image=images(), edited_image=images())


def test_bad_inputs_are_named(nodes):
    from editlab.nodes.common import EditLabInputError

    with ChatStandIn(['{"scores": [1, 1]}']) as site:
        with pytest.raises(EditLabInputError, match="input 'llm'.*vision"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site, vision=False), instruction="x",
                                          source_image=images(), edited_image=images())
        with pytest.raises(EditLabInputError, match="input 'instruction'"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site), instruction="  ", source_image=images(),
                                          edited_image=images())
        with pytest.raises(EditLabInputError, match="input 'source_image'"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site), instruction="x", source_image=images(2),
                                          edited_image=images(3))
        assert site.calls == 0


def test_an_http_error_shows_the_endpoints_reason(nodes):
    """Issue 22: HTTP 400 with the endpoint's own message (cut), not a bare status."""
    with ChatStandIn([Reply(400, {"error": {"message": "model 'judge' does not support image input",
                                            "type": "invalid_request_error"}})]) as site:
        with pytest.raises(RuntimeError, match=r"HTTP 400 \(model 'judge' does not support image input\)$"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site, retries=2), instruction="x",
                                          source_image=images(), edited_image=images())
        assert site.calls == 1


@pytest.mark.parametrize("answer", [Reply(200, "[" * 100_000, {"Content-Type": "application/json"}),
                                    '{"scores": ' + "[" * 100_000 + "}",
                                    Reply(200, [chat_completion('{"scores": [5, 5]}')]),  # a list for an object
                                    "[5, 5]"], ids=["deep body", "deep message", "list body", "list message"])
def test_malformed_answers_end_as_a_clear_error(nodes, answer):
    """A 100,000-deep JSON (as the body, or inside the message) and a list where an object is expected: retried,
    then the node's clear error, never a RecursionError or AttributeError."""
    with ChatStandIn([answer]) as site:
        with pytest.raises(RuntimeError, match=r"VIEScore: the judge gave no usable answer .*after 2 attempt"):
            nodes.EditLabVIEScore.execute(llm=llm_of(nodes, site, retries=1), instruction="x",
                                          source_image=images(), edited_image=images())
