"""The server owner's LLM endpoints (models/llm/endpoints.py): where they are declared (the environment, a file in
ComfyUI's user directory), what a workflow may select (an endpoint by name or exact base URL, its bound variable or
none), and that nothing else can make a key travel: an unconfigured variable, a bound key with another host, a
variable written into the base URL, a key pasted where a name belongs (never quoted back)."""
import json

import pytest

from editlab.models.llm.endpoints import (OWNER_ENV, Endpoint, OwnerConfigError, SelectionError, load_owner_endpoints,
                                          normalise_base_url, select)

OWNER = {"openai": {"base_url": "https://API.openai.com:443/v1/", "key_env": "OPENAI_API_KEY"},
         "lab": {"base_url": "http://10.0.0.5:8000/v1", "allow_private": True},
         "local": {"base_url": "http://127.0.0.1:11434/v1"}}
PASTED = "sk-live-0123456789abcdefXYZ"


def owner(**extra):
    return load_owner_endpoints(None, {OWNER_ENV: json.dumps({**OWNER, **extra})})


def test_declared_in_the_environment_and_normalised():
    eps = owner()
    assert eps["openai"] == Endpoint("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", False)
    assert eps["lab"].allow_private and eps["lab"].key_env == ""


def test_declared_in_the_user_directory_and_the_environment_wins(tmp_path, caplog):
    (tmp_path / "editlab").mkdir()
    (tmp_path / "editlab" / "llm_endpoints.json").write_text(json.dumps({
        "openai": {"base_url": "https://api.openai.com/v1", "key_env": "FILE_KEY"},
        "mine": {"base_url": "https://llm.example.org/v1", "key_env": "MINE_KEY"}}))
    eps = load_owner_endpoints(str(tmp_path), {})
    assert eps["openai"].key_env == "FILE_KEY" and eps["mine"].key_env == "MINE_KEY"
    both = load_owner_endpoints(str(tmp_path), {OWNER_ENV: json.dumps(OWNER)})
    assert both["openai"].key_env == "OPENAI_API_KEY" and "mine" in both
    assert "environment's entry is used" in caplog.text


def test_no_configuration_binds_no_key():
    assert load_owner_endpoints(None, {}) == {}
    for url in ("http://127.0.0.1:11434/v1", "https://api.openai.com/v1", "http://localhost:8080/v1"):
        assert select(url, "", {}) == (None, normalise_base_url(url))


@pytest.mark.parametrize("config, why", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"1bad": {"base_url": "https://a.example/v1"}}, "a name is a letter"),
    ({"a": "https://a.example/v1"}, "expected an object"),
    ({"a": {"base_url": "https://a.example/v1", "api_key_env": "X"}}, "unknown field"),
    ({"a": {"base_url": "ftp://a.example/v1"}}, "http:// or https://"),
    ({"a": {"base_url": "https://a.example/v1?key=1"}}, "without a query"),
    ({"a": {"base_url": "https://a.example/v1", "key_env": PASTED}}, "NAME of an environment variable"),
    ({"a": {"base_url": "https://a.example/v1", "allow_private": "yes"}}, "true or false"),
    ({"a": {"base_url": "https://a.example/v1", "key_env": "A"}, "b": {"base_url": "https://a.example/v1/",
                                                                      "key_env": "B"}}, "ambiguous"),
])
def test_a_bad_owner_configuration_is_a_clear_error(config, why):
    text = config if isinstance(config, str) else json.dumps(config)
    with pytest.raises(OwnerConfigError, match=why) as err:
        load_owner_endpoints(None, {OWNER_ENV: text})
    assert PASTED not in str(err.value) and OWNER_ENV in str(err.value)


@pytest.mark.parametrize("base_url, key_env, name, bound", [
    ("openai", "", "openai", "OPENAI_API_KEY"),
    ("openai", "OPENAI_API_KEY", "openai", "OPENAI_API_KEY"),
    ("https://api.openai.com/v1", "OPENAI_API_KEY", "openai", "OPENAI_API_KEY"),
    ("HTTPS://api.OpenAI.com:443/v1/", "", "openai", "OPENAI_API_KEY"),
    ("lab", "", "lab", ""),
    ("http://127.0.0.1:11434/v1", "", "local", ""),
    ("http://127.0.0.1:8080/v1", "", None, ""),  # unconfigured loopback: keyless, no configuration needed
    ("https://free-llm.example.org/v1", "", None, ""),  # unconfigured public: keyless, address-checked later
])
def test_what_a_workflow_may_select(base_url, key_env, name, bound):
    endpoint, url = select(base_url, key_env, owner())
    assert (endpoint.name if endpoint else None) == name
    assert (endpoint.key_env if endpoint else "") == bound
    assert url == (endpoint.base_url if endpoint else normalise_base_url(base_url))


@pytest.mark.parametrize("base_url, key_env, input_name, says", [
    # a variable nobody bound, for any host
    ("http://127.0.0.1:9999/v1", "AWS_SECRET_ACCESS_KEY", "api_key_env", "no key is bound to this base URL"),
    ("https://attacker.example/v1", "OPENAI_API_KEY", "api_key_env", "no key is bound to this base URL"),
    # a bound variable with another endpoint, or another variable with a bound endpoint
    ("lab", "OPENAI_API_KEY", "api_key_env", "bound no key to endpoint 'lab'"),
    ("openai", "AWS_SECRET_ACCESS_KEY", "api_key_env", "empty or OPENAI_API_KEY"),
    ("https://api.openai.com/v2", "OPENAI_API_KEY", "api_key_env", "no key is bound"),  # not the exact base URL
    # a key pasted as the name: refused, never quoted
    ("openai", PASTED, "api_key_env", "NAME of an environment variable"),
    # a variable written into the base URL (nothing is interpolated, and such a URL is refused outright)
    ("https://attacker.example/v1?key=$OPENAI_API_KEY", "", "base_url", "without a query"),
    ("https://attacker.example/${OPENAI_API_KEY}/v1", "", "base_url", "no $, {, }, %"),
    ("https://attacker.example/%24OPENAI_API_KEY/v1", "", "base_url", "no $, {, }, %"),
    ("https://attacker.example/v1#$OPENAI_API_KEY", "", "base_url", "without a query or fragment"),
    (f"https://me:{PASTED}@attacker.example/v1", "", "base_url", "without user:password"),
    ("file:///etc/passwd", "", "base_url", "http:// or https://"),
    ("opnai", "", "base_url", "or the name of an endpoint the server's owner configured"),
])
def test_what_a_workflow_may_not_select(base_url, key_env, input_name, says):
    with pytest.raises(SelectionError, match=says.replace("$", r"\$").replace("{", r"\{")) as err:
        select(base_url, key_env, owner())
    assert err.value.input_name == input_name
    assert PASTED not in str(err.value) and "AWS_SECRET_ACCESS_KEY" not in str(err.value)
