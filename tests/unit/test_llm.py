"""The OpenAI-compatible client against a loopback stand-in: answers, JSON extraction, bounded retries on malformed
JSON / timeouts / 500, a clear final error, and the API key never in any error, log or public config."""
import json
import logging

import pytest
from standins import ChatStandIn, Reply

from editlab.models.llm import LLMClient, LLMConfig, LLMError, extract_json

KEY = "sk-planted-0123456789abcdef-SECRET"


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    from editlab.models.llm import client

    monkeypatch.setattr(client, "RETRY_PAUSE", 0.0)
    monkeypatch.setenv("EDITLAB_TEST_KEY", KEY)


def cfg(standin, **kw):
    return LLMConfig(**{"base_url": standin.base_url, "model": "stand-in", "api_key_env": "EDITLAB_TEST_KEY",
                        "timeout": 2.0, "max_retries": 2, **kw})


def test_plain_answer_and_the_key_goes_only_in_the_authorization_header():
    with ChatStandIn(["hello there"]) as s:
        assert LLMClient(cfg(s)).chat([{"role": "user", "content": "hi"}]) == "hello there"
        req = s.chats()[0]
        assert {k.lower(): v for k, v in req["headers"].items()}["authorization"] == f"Bearer {KEY}"
        assert req["body"]["model"] == "stand-in" and req["body"]["temperature"] == 0.0 and req["body"]["seed"] == 0
        assert KEY not in json.dumps(req["body"])


def test_json_answer_in_a_fence_with_prose():
    with ChatStandIn(['Sure! Here it is:\n```json\n{"a": 1, "b": {"c": [1, 2]}}\n```\nanything else?']) as s:
        assert LLMClient(cfg(s)).chat_json([{"role": "user", "content": "x"}]) == {"a": 1, "b": {"c": [1, 2]}}


def test_extract_json_cases():
    assert extract_json('noise {"k": "v}"} tail') == {"k": "v}"}
    assert extract_json('{bad} then {"ok": true}') == {"ok": True}
    with pytest.raises(ValueError):
        extract_json("no json here [1, 2]")


def test_malformed_json_is_retried_then_succeeds():
    with ChatStandIn(["not json at all", '{"score": 7}']) as s:
        client = LLMClient(cfg(s))
        assert client.chat_json([{"role": "user", "content": "x"}]) == {"score": 7}
        assert s.calls == 2 and client.calls == 2


def test_a_check_can_reject_an_answer_and_have_it_retried():
    def check(obj):
        if "score" not in obj:
            raise KeyError("score")
        return obj

    with ChatStandIn(['{"other": 1}', '{"score": 3}']) as s:
        assert LLMClient(cfg(s)).chat_json([{"role": "user", "content": "x"}], check) == {"score": 3}


def test_malformed_json_every_time_gives_a_clear_error_after_bounded_retries():
    with ChatStandIn(["nope"]) as s:
        with pytest.raises(LLMError, match=r"no usable answer after 3 attempt\(s\): malformed answer"):
            LLMClient(cfg(s)).chat_json([{"role": "user", "content": "x"}])
        assert s.calls == 3


def test_http_500_is_retried_then_clear_error():
    with ChatStandIn([Reply(500, {"error": {"message": "boom"}}), "fine"]) as s:
        assert LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}]) == "fine"
    with ChatStandIn([Reply(500, {"error": {"message": "boom"}})]) as s:
        with pytest.raises(LLMError, match="HTTP 500; HTTP 500; HTTP 500"):
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
        assert s.calls == 3


def test_http_400_is_not_retried():
    with ChatStandIn([Reply(400, {"error": {"message": "bad model"}})]) as s:
        with pytest.raises(LLMError, match=r"after 1 attempt\(s\): HTTP 400"):
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
        assert s.calls == 1


def test_timeout_is_retried_then_clear_error():
    with ChatStandIn([Reply(200, {}, delay=1.0)]) as s:
        with pytest.raises(LLMError, match=r"no answer within 0.3 s; no answer within 0.3 s"):
            LLMClient(cfg(s, timeout=0.3, max_retries=1)).chat([{"role": "user", "content": "x"}])


def test_unreachable_endpoint_is_a_clear_error():
    from standins import StandIn

    with StandIn() as s:
        port = s.port  # closed after this block: nothing listens there any more
    with pytest.raises(LLMError, match="connection failed"):
        LLMClient(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=1)).chat(
            [{"role": "user", "content": "x"}])


def test_key_never_in_errors_logs_or_config(caplog):
    caplog.set_level(logging.DEBUG)  # openai's and httpx2's own debug logging included
    errors = []
    with ChatStandIn([Reply(500, {"error": {"message": f"echo {KEY}"}}), "bad", '{"ok": 1}']) as s:
        client = LLMClient(cfg(s, max_retries=0))
        for _ in range(3):
            try:
                client.chat_json([{"role": "user", "content": "x"}])
            except LLMError as exc:
                errors.append(str(exc))
        public = json.dumps(client.config.public())
    assert len(errors) == 2
    text = "\n".join(errors) + caplog.text + public
    assert "EditLab LLM" in caplog.text  # the failures were logged ...
    assert KEY not in text  # ... without the key


def test_a_key_given_instead_of_a_variable_name_is_refused_without_echo():
    with ChatStandIn(["x"]) as s:
        with pytest.raises(LLMError) as err:
            LLMClient(cfg(s, api_key_env=KEY)).chat([{"role": "user", "content": "x"}])
        assert "NAME of an environment variable" in str(err.value) and KEY not in str(err.value)
        assert s.calls == 0


def test_missing_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("EDITLAB_TEST_KEY")
    with ChatStandIn(["x"]) as s:
        with pytest.raises(LLMError, match="EDITLAB_TEST_KEY is not set"):
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])


def test_netguard_refuses_a_remote_endpoint_before_dialling(monkeypatch):
    monkeypatch.setenv("EDITLAB_NETGUARD", "loopback")
    with pytest.raises(LLMError, match="not loopback"):
        LLMClient(LLMConfig(base_url="https://api.openai.com/v1")).chat([{"role": "user", "content": "x"}])


def test_without_the_openai_package_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(LLMError, match="'openai' package is not installed"):
        LLMClient(LLMConfig()).chat([{"role": "user", "content": "x"}])
