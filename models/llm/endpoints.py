"""Which LLM endpoints exist and which key each may use: the server's owner decides, outside any workflow.

A workflow is a file anyone may share; whoever runs it runs what its author wrote. So a workflow never chooses which
secret is read nor where it is sent. The owner declares endpoints in either place (both are read; a name in both:
the environment's entry wins, logged):

- the environment variable ``EDITLAB_LLM_ENDPOINTS``, holding JSON;
- the file ``editlab/llm_endpoints.json`` in ComfyUI's user directory (``ComfyUI/user/``; outside every user's
  userdata folder, so the web API cannot write it), the same JSON.

    {"openai": {"base_url": "https://api.openai.com/v1", "key_env": "OPENAI_API_KEY"},
     "lab":    {"base_url": "http://10.0.0.5:8000/v1", "allow_private": true}}

Each entry: ``base_url`` (http/https, no user:password, query or fragment), optionally ``key_env`` (the NAME of the
variable holding the key for that endpoint and no other) and ``allow_private`` (the endpoint is on the local network:
private, shared and unique-local addresses allowed for it; metadata addresses never).

A workflow's LLM node selects an endpoint by its name or by its exact base URL; its ``api_key_env`` may only be
empty or the variable bound to the selected endpoint. A base URL nobody configured is allowed without a key: on
loopback (Ollama, llama.cpp: works with no configuration), or anywhere the address policy allows (public addresses
only). With no configuration, no secret is sent anywhere. Nothing here reads a key's value (``client.read_key`` does,
when a request is made).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("editlab.llm")
OWNER_ENV = "EDITLAB_LLM_ENDPOINTS"
OWNER_FILE = os.path.join("editlab", "llm_endpoints.json")  # under ComfyUI's user directory
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ENDPOINT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
URL_PATH = re.compile(r"[A-Za-z0-9._~/+-]*")  # no '$', '{', '%', '?', '#': nothing that could stand for a variable
MAX_CONFIG_BYTES = 256 * 1024
ENTRY_KEYS = {"base_url", "key_env", "allow_private"}


class OwnerConfigError(ValueError):
    """The owner's endpoint configuration is unusable; the message names the source and the entry."""


class SelectionError(ValueError):
    """A workflow's choice of endpoint or key is not allowed; ``input_name`` is the node input to blame."""

    def __init__(self, input_name: str, expected: str):
        super().__init__(expected)
        self.input_name = input_name
        self.expected = expected


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str  # normalised (see ``normalise_base_url``)
    key_env: str = ""
    allow_private: bool = False


def normalise_base_url(url: str) -> str:
    """``url`` with scheme and host in lower case, the default port and a trailing '/' dropped; ValueError (saying
    why, never quoting the URL, which may hold a secret) for anything but ``http(s)://host[:port][/path]``."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("a URL without user:password")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError("a URL without a query or fragment (an OpenAI-compatible base URL has none)")
    if not URL_PATH.fullmatch(parts.path):
        raise ValueError("a URL path of letters, digits and . _ ~ / + - only (no $, {, }, % or other characters "
                         "that could stand for a variable)")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != (443 if scheme == "https" else 80):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def _entries(text: str, source: str) -> dict[str, Endpoint]:
    try:
        data = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise OwnerConfigError(f"{source} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise OwnerConfigError(f"{source} must be a JSON object of endpoint name -> {{base_url, key_env}}")
    found = {}
    for name, entry in data.items():
        where = f"{source}, endpoint {str(name)[:64]!r}"
        if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
            raise OwnerConfigError(f"{where}: a name is a letter, then letters, digits, '_', '.' or '-' (64 at most)")
        if not isinstance(entry, dict):
            raise OwnerConfigError(f"{where}: expected an object with base_url (and key_env, allow_private)")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise OwnerConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))[:120]} "
                                   f"(known: {', '.join(sorted(ENTRY_KEYS))})")
        try:
            base = normalise_base_url(entry.get("base_url", ""))
        except ValueError as exc:
            raise OwnerConfigError(f"{where}: base_url must be {exc}") from None
        key_env = entry.get("key_env", "")
        if not isinstance(key_env, str) or (key_env and not ENV_NAME.fullmatch(key_env)):
            # never quoted: an owner may have pasted the key itself here
            raise OwnerConfigError(f"{where}: key_env must be the NAME of an environment variable (letters, digits, "
                                   "'_'), not the key itself")
        private = entry.get("allow_private", False)
        if not isinstance(private, bool):
            raise OwnerConfigError(f"{where}: allow_private must be true or false")
        found[name] = Endpoint(name, base, key_env, private)
    return found


def load_owner_endpoints(user_dir: str | None = None, environ=None) -> dict[str, Endpoint]:
    """The owner's endpoints, from ``EDITLAB_LLM_ENDPOINTS`` and ``<user_dir>/editlab/llm_endpoints.json``."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Endpoint] = {}
    if user_dir:
        path = os.path.join(user_dir, OWNER_FILE)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                raise OwnerConfigError(f"{path} is over {MAX_CONFIG_BYTES} bytes")
            try:
                merged.update(_entries(raw.decode("utf-8"), path))
            except UnicodeDecodeError:
                raise OwnerConfigError(f"{path} is not UTF-8 text") from None
    from_env = _entries(environ.get(OWNER_ENV, ""), f"the environment variable {OWNER_ENV}")
    for name in sorted(set(from_env) & set(merged)):
        log.warning("EditLab LLM endpoints: %r is declared in %s and in the user directory's file; the "
                    "environment's entry is used", name, OWNER_ENV)
    merged.update(from_env)
    by_url: dict[str, str] = {}
    for ep in merged.values():
        other = by_url.setdefault(ep.base_url, ep.name)
        if other != ep.name and (merged[other].key_env, merged[other].allow_private) != (ep.key_env,
                                                                                           ep.allow_private):
            raise OwnerConfigError(f"{OWNER_ENV} / user/editlab/llm_endpoints.json: endpoints {other!r} and "
                                   f"{ep.name!r} have the same base_url with different key_env or allow_private: "
                                   "selecting by URL would be ambiguous")
    return merged


def select(base_url: str, api_key_env: str, owner: dict[str, Endpoint]) -> tuple[Endpoint | None, str]:
    """The owner's endpoint a node's inputs select (None: an unconfigured, keyless endpoint) and the base URL to
    use; ``SelectionError`` naming the input otherwise. Never quotes ``api_key_env`` (it may be a pasted key)."""
    text = base_url.strip()
    env = api_key_env.strip()
    endpoint = owner.get(text)
    if endpoint is None:
        try:
            url = normalise_base_url(text)
        except ValueError as exc:
            hint = f" or the name of an endpoint the server's owner configured ({', '.join(sorted(owner))[:300]})" \
                if owner else ""
            raise SelectionError("base_url", f"{exc}{hint}") from None
        endpoint = next((ep for ep in owner.values() if ep.base_url == url), None)
    else:
        url = endpoint.base_url
    if env and not ENV_NAME.fullmatch(env):
        raise SelectionError("api_key_env", "the NAME of an environment variable holding the key (letters, digits "
                                            "and '_'), not the key itself; leave empty for local servers")
    if env and (endpoint is None or env != endpoint.key_env):
        if endpoint is None:
            why = ("empty: no key is bound to this base URL. Keys are bound to endpoints by the server's owner "
                   f"({OWNER_ENV} or user/{OWNER_FILE.replace(os.sep, '/')}), never by a workflow")
        elif endpoint.key_env:
            why = (f"empty or {endpoint.key_env}: the only variable the server's owner bound to endpoint "
                   f"{endpoint.name!r}")
        else:
            why = f"empty: the server's owner bound no key to endpoint {endpoint.name!r}"
        raise SelectionError("api_key_env", why)
    return endpoint, url
