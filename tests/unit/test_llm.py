"""The OpenAI-compatible client against a loopback stand-in: answers, JSON extraction, bounded retries on malformed
JSON / timeouts / 500, a clear final error with the endpoint's own message, and the API key never in any error, log
or public config. Issue 22: the key only for a config bound to an owner's endpoint, only to that endpoint's origin
(no redirect followed, no ambient openai headers), every request through the fetcher's address policy and deadline,
malformed answers refused without an exception."""
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
    """A config as the LLM node makes it for an owner's endpoint ``test`` bound to EDITLAB_TEST_KEY."""
    return LLMConfig(**{"base_url": standin.base_url, "model": "stand-in", "api_key_env": "EDITLAB_TEST_KEY",
                        "endpoint": "test", "timeout": 2.0, "max_retries": 2, **kw})


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
        with pytest.raises(LLMError, match=r"HTTP 500 \(boom\); HTTP 500 \(boom\); HTTP 500 \(boom\)"):
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
        assert s.calls == 3


def test_http_400_is_not_retried():
    with ChatStandIn([Reply(400, {"error": {"message": "bad model"}})]) as s:
        with pytest.raises(LLMError, match=r"after 1 attempt\(s\): HTTP 400 \(bad model\)"):
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
    with pytest.raises(LLMError, match="connection failed.*ConnectionRefusedError"):
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
    with pytest.raises(LLMError, match="non-loopback host while EDITLAB_NETGUARD") as err:
        LLMClient(LLMConfig(base_url="https://api.openai.com/v1")).chat([{"role": "user", "content": "x"}])
    assert err.value.refused


def test_without_the_openai_package_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(LLMError, match="'openai' package is not installed"):
        LLMClient(LLMConfig()).chat([{"role": "user", "content": "x"}])


# -- issue 22 ---------------------------------------------------------------------------------------------------------

def _auth(request) -> str | None:
    return {k.lower(): v for k, v in request["headers"].items()}.get("authorization")


def test_a_variable_without_an_owners_endpoint_is_never_read():
    """A config naming a variable but no owner's endpoint (what a workflow alone could ask for): refused, nothing
    sent."""
    with ChatStandIn(["x"]) as s:
        with pytest.raises(LLMError, match="keys are bound to endpoints by the server's owner") as err:
            LLMClient(cfg(s, endpoint="")).chat([{"role": "user", "content": "x"}])
        assert s.requests == [] and err.value.refused and KEY not in str(err.value)


def test_keyless_endpoints_get_no_authorization_at_all():
    with ChatStandIn(["fine"]) as s:
        assert LLMClient(cfg(s, api_key_env="", endpoint="")).chat([{"role": "user", "content": "x"}]) == "fine"
        assert _auth(s.requests[0]) is None


def test_a_redirect_is_never_followed_and_the_key_stays_with_the_endpoint():
    with ChatStandIn(["stolen"]) as attacker, ChatStandIn([Reply(307, b"", {
            "Location": "PLACEHOLDER"})]) as endpoint:
        endpoint.script = [Reply(307, b"", {"Location": attacker.base_url + "/chat/completions"})]
        with pytest.raises(LLMError, match="HTTP 307, a redirect to http://127.0.0.1.*not followed") as err:
            LLMClient(cfg(endpoint)).chat([{"role": "user", "content": "x"}])
        assert err.value.refused and endpoint.calls == 1  # not retried
        assert attacker.requests == []


def test_ambient_openai_headers_from_the_environment_are_not_sent(monkeypatch):
    """openai reads OPENAI_CUSTOM_HEADERS / OPENAI_ORG_ID / OPENAI_PROJECT_ID from the process environment and would
    send them to any base URL; the transport sends only the headers it chooses."""
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer AMBIENT-SECRET\nX-Internal: AMBIENT-SECRET")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-AMBIENT-SECRET")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-AMBIENT-SECRET")
    with ChatStandIn(["ok"]) as s:
        LLMClient(cfg(s, api_key_env="", endpoint="")).chat([{"role": "user", "content": "x"}])
        LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
        sent = [json.dumps(r["headers"]) for r in s.requests]
    assert not any("AMBIENT-SECRET" in h for h in sent)
    assert _auth(s.requests[1]) == f"Bearer {KEY}"


@pytest.mark.parametrize("base_url, why", [
    ("http://169.254.169.254/v1", "cloud metadata"), ("http://[fd00:ec2::254]/v1", "cloud metadata"),
    ("http://10.0.0.8:8000/v1", "private address"), ("http://192.0.0.192/v1", "cloud metadata"),
])
def test_the_llm_client_goes_through_the_address_policy(monkeypatch, base_url, why):
    monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)  # what refuses is the policy, not the test switch
    with pytest.raises(LLMError, match=why) as err:
        LLMClient(LLMConfig(base_url=base_url, timeout=2, max_retries=2)).chat([{"role": "user", "content": "x"}])
    assert err.value.refused and "after 1 attempt" in str(err.value)


def test_an_owners_lan_endpoint_may_be_private_and_a_name_is_checked_after_resolving(monkeypatch):
    from standins import FakeInternet

    net = FakeInternet(monkeypatch)
    with ChatStandIn(["from the lan"]) as s:
        net.add("vllm.lan", s, "10.1.2.3")
        url = f"http://vllm.lan:{s.port}/v1"
        with pytest.raises(LLMError, match="resolves to 10.1.2.3, a private address"):
            LLMClient(LLMConfig(base_url=url, timeout=2, max_retries=0)).chat([{"role": "user", "content": "x"}])
        owner = LLMConfig(base_url=url, timeout=2, max_retries=0, endpoint="lab", allow_private=True)
        assert LLMClient(owner).chat([{"role": "user", "content": "x"}]) == "from the lan"
        assert s.requests[0]["headers"]["Host"] == f"vllm.lan:{s.port}"


def test_a_header_trickle_ends_at_the_timeout():
    import time

    with ChatStandIn([Reply(header_trickle=0.3)]) as s:
        t = time.monotonic()
        with pytest.raises(LLMError, match=r"no answer within 1 s; no answer within 1 s"):
            LLMClient(cfg(s, timeout=1.0, max_retries=1)).chat([{"role": "user", "content": "x"}])
        assert time.monotonic() - t < 3.0


@pytest.mark.parametrize("body, why", [
    ("[" * 100_000, "nested deeper than 64 levels"),
    (json.dumps({"choices": [{"message": {"content": "{" * 100_000}}]}), "nests brackets deeper than 64"),
    ([1, 2, 3], "an answer without a message"),
    (json.dumps({"choices": [{"message": {"content": "[1, 2]"}}]}), "no JSON object"),
])
def test_malformed_answers_are_clear_errors_not_exceptions(body, why):
    with ChatStandIn([Reply(200, body, {"Content-Type": "application/json"})]) as s:
        with pytest.raises(LLMError, match=why) as err:
            LLMClient(cfg(s, max_retries=1)).chat_json([{"role": "user", "content": "x"}])
        assert s.calls == 2 and not err.value.refused  # retried once, like any malformed answer


def test_an_http_error_shows_the_endpoints_message_cut_and_without_the_key():
    long = "x" * 2000
    echo = f"Incorrect API key provided: {KEY[:8]}{'*' * 20}{KEY[-4:]}. Also {KEY}. {long}"
    with ChatStandIn([Reply(401, {"error": {"message": echo, "type": "invalid_request_error"}})]) as s:
        with pytest.raises(LLMError, match=r"HTTP 401 \(Incorrect API key provided: \[redacted\]") as err:
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
    text = str(err.value)
    assert KEY not in text and KEY[:8] + "***" not in text and len(text) < 600
    with ChatStandIn([Reply(400, "plain text reason\nwith\x1b[31m escapes")]) as s:
        with pytest.raises(LLMError, match=r"HTTP 400 \(plain text reason with \[31m escapes\)"):
            LLMClient(cfg(s)).chat([{"role": "user", "content": "x"}])
