"""A thin wrapper over the maintained ``openai`` package for any OpenAI-compatible chat endpoint (OpenAI, Ollama,
llama.cpp's server, vLLM, LM Studio ...), with what the nodes need on top:

- which endpoint may get which key is the server owner's decision (``endpoints``): a config carries the owner's
  endpoint name and the variable bound to it, resolved by the LLM node; ``read_key`` refuses a variable on a config
  without an owner's endpoint. The key's value is read at call time and handed to the transport only; it is never
  stored on the config (which is what workflows, history and node outputs carry), and every message this module
  raises or logs has it (and any piece of it an endpoint echoes back) replaced by ``[redacted]``;
- every request goes through ``transport``: the pack's address policy, the endpoint's own origin only, no redirects,
  a hard deadline of ``timeout`` seconds per request, size and nesting limits on the answer;
- bounded retries: a timeout, a connection error, HTTP 429 or 5xx, and (for ``chat_json``) an answer that is not
  the JSON asked for are retried ``max_retries`` times with a short fixed pause, then ``LLMError`` says what
  happened on each attempt, with the endpoint's own error message (cut); a refusal (the address policy, a redirect)
  is not retried and sets ``LLMError.refused``;
- ``extract_json``: the first JSON object in an answer, fenced (```json ... ```) or bare, found by the JSON decoder
  itself (never eval), on at most ``MAX_ANSWER_CHARS`` characters nested at most 64 deep;
- ``image_part``: a PIL image as a vision message part (a base64 PNG data URL), for models that take images.

``openai`` is imported when a client is first made, so the pack loads without it (the LLM nodes then say so).
Under ``EDITLAB_NETGUARD=loopback`` (the test suite) a base URL that is not loopback is refused before any dial.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from .. import netpolicy
from ..fetch import FetchRefused, nesting_exceeds
from .endpoints import ENV_NAME, normalise_base_url

log = logging.getLogger("editlab.llm")
NO_KEY = "no-key"  # what openai is given for a keyless endpoint (it requires one; the transport never sends it)
RETRY_PAUSE = 0.25  # seconds between attempts
MAX_ANSWER_CHARS = 1_000_000  # extract_json reads at most this much of an answer
MAX_JSON_DEPTH = 64
MAX_JSON_STARTS = 50  # '{' positions tried by extract_json
MAX_ENDPOINT_MESSAGE = 300  # characters of an endpoint's own error message kept


class LLMError(RuntimeError):
    """The endpoint could not give a usable answer; the message says why (key redacted). ``refused``: a request was
    refused by the pack itself (the address policy, a redirect, another host), so asking again can not help."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = "http://127.0.0.1:11434/v1"
    model: str = "llava"
    api_key_env: str = ""  # the NAME of the variable the owner bound to ``endpoint`` ("" = no key)
    temperature: float = 0.0
    timeout: float = 60.0
    max_retries: int = 2
    seed: int | None = 0
    vision: bool = True
    endpoint: str = ""  # the owner's name for the endpoint ("" = not configured by the owner: keyless)
    allow_private: bool = False  # the owner declared it on the local network

    def public(self) -> dict:
        """What may be shown (history, outputs): everything here, which by construction holds no key."""
        return asdict(self)


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret``, and without any token that shows part of it: a run of 8 of its characters, or a
    masked echo such as "sk-proj-abc*****wxyz" whose visible ends are the key's own ends (endpoints echo keys so)."""
    text = str(text)
    if not secret or len(secret) < 4:
        return text
    text = text.replace(secret, "[redacted]")

    def hide(match):
        pieces = [p for p in re.split(r"\*+", match.group(0)) if p]
        for p in pieces:
            if any(p[i:i + 8] in secret for i in range(len(p) - 7)) or (len(pieces) > 1 and len(p) >= 4 and
                                                  (secret.startswith(p) or secret.endswith(p))):
                return "[redacted]"
        return match.group(0)

    return re.sub(r"[A-Za-z0-9_.*-]{8,}", hide, text)


def check_base_url(url: str) -> str:
    """The base URL, normalised; LLMError (never quoting it) when it is no plain http(s) base URL."""
    try:
        return normalise_base_url(url)
    except ValueError as exc:
        raise LLMError(f"the base URL must be {exc}", refused=True) from None


def read_key(config: LLMConfig) -> str:
    """The key's value for ``config`` ("" for a keyless endpoint). Only a variable bound to an owner's endpoint is
    read: a config naming a variable without one is refused (the LLM node resolves both from the owner's file)."""
    env_name = config.api_key_env
    if not env_name:
        return ""
    if not ENV_NAME.fullmatch(env_name):
        raise LLMError("api_key_env must be the NAME of an environment variable (letters, digits, '_'), "
                       "not the key itself", refused=True)
    if not config.endpoint:
        raise LLMError(f"no key is read for {config.base_url}: keys are bound to endpoints by the server's owner, "
                       "and this endpoint is not one of them", refused=True)
    value = os.environ.get(env_name, "")
    if not value:
        raise LLMError(f"the environment variable {env_name} is not set (the server's owner bound it to endpoint "
                       f"{config.endpoint!r}; it should hold the API key)", refused=True)
    return value


def _loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = netpolicy.host_literal(host)
    except ValueError:
        return False
    return ip is not None and netpolicy.is_loopback(ip)


def extract_json(text: str):
    """The first JSON object in ``text`` (inside a ```json fence or bare); ValueError when there is none."""
    if not isinstance(text, str):
        raise ValueError("the answer is not text")
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"the answer is over {MAX_ANSWER_CHARS} characters")
    if nesting_exceeds(text, MAX_JSON_DEPTH):
        raise ValueError(f"the answer nests brackets deeper than {MAX_JSON_DEPTH} levels")
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    decoder = json.JSONDecoder()
    for candidate in fenced + [text]:
        for n, match in enumerate(re.finditer(r"\{", candidate)):
            if n >= MAX_JSON_STARTS:
                break
            try:
                obj, _ = decoder.raw_decode(candidate[match.start():])
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError("no JSON object in the answer")


def image_part(image, max_side: int = 1024) -> dict:
    """A PIL image as an OpenAI vision content part (PNG data URL), downscaled to ``max_side``."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return {"type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}}


def endpoint_message(exc, key: str | None) -> str:
    """The endpoint's own reason for an HTTP error (``error.message`` as OpenAI and most servers send it, else the
    body's text), on one line, cut, without the key."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or err.get("msg")
        elif isinstance(err, str):
            message = err
        if message is None:
            message = body.get("message") or body.get("detail")
    elif isinstance(body, str):
        message = body
    if message is None:
        try:
            message = exc.response.text
        except Exception:  # noqa: BLE001 - no body to show
            message = ""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(message)[:4 * MAX_ENDPOINT_MESSAGE]).split())
    text = redact(text, key)
    return text[:MAX_ENDPOINT_MESSAGE] + ("..." if len(text) > MAX_ENDPOINT_MESSAGE else "")


class LLMClient:
    """``chat(messages) -> str`` and ``chat_json(messages, check) -> dict`` on one endpoint."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.calls = 0  # requests sent (attempts included)

    def _client(self):
        try:
            import openai
        except ImportError as exc:
            raise LLMError("the 'openai' package is not installed (pip install -r requirements.txt)") from exc
        from .transport import guarded_http_client

        cfg = self.config
        base = check_base_url(cfg.base_url)
        key = read_key(cfg)
        host = urlsplit(base).hostname or ""
        allow_loopback = bool(cfg.endpoint) or _loopback_host(host)
        http_client = guarded_http_client(base, key, cfg.timeout, allow_loopback,
                                          bool(cfg.endpoint) and cfg.allow_private)
        return openai, key, openai.OpenAI(base_url=base, api_key=key or NO_KEY, timeout=cfg.timeout, max_retries=0,
                                          http_client=http_client)

    def chat(self, messages: list, max_tokens: int = 800) -> str:
        return self._attempts(messages, max_tokens, None)

    def chat_json(self, messages: list, check=None, max_tokens: int = 800) -> dict:
        """The answer's JSON object; ``check(obj)`` may raise ValueError to have a malformed answer retried."""
        return self._attempts(messages, max_tokens, check or (lambda obj: obj), want_json=True)

    def _attempts(self, messages, max_tokens, check, want_json=False):
        cfg = self.config
        try:
            openai, key, client = self._client()
        except LLMError as exc:
            msg = f"{cfg.model} at {cfg.base_url}: {exc}"
            log.warning("EditLab LLM: %s", msg)
            raise LLMError(msg, exc.refused) from None
        problems, refused = [], False
        try:
            for attempt in range(cfg.max_retries + 1):
                if attempt:
                    time.sleep(RETRY_PAUSE)
                self.calls += 1
                kwargs = dict(model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=max_tokens)
                if cfg.seed is not None:
                    kwargs["seed"] = cfg.seed
                try:
                    resp = client.chat.completions.create(**kwargs)
                    text = resp.choices[0].message.content or ""
                except FetchRefused as exc:  # raised by the transport, passed through by openai
                    if exc.kind == "refused":
                        problems.append(f"refused: {exc}")
                        refused = True
                        break
                    problems.append(f"answer refused: {exc}")
                    continue
                except openai.APIStatusError as exc:
                    reason = endpoint_message(exc, key)
                    problems.append(f"HTTP {exc.status_code}" + (f" ({reason})" if reason else ""))
                    if exc.status_code in (429,) or exc.status_code >= 500:
                        continue
                    break  # 4xx: asking again will not help
                except openai.APITimeoutError:
                    problems.append(f"no answer within {cfg.timeout:g} s")
                    continue
                except openai.APIConnectionError as exc:
                    cause = str(exc.__cause__ or exc)
                    problems.append(cause if cause.startswith("connection failed") else f"connection failed ({cause})")
                    continue
                except (IndexError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    problems.append(f"an answer without a message ({type(exc).__name__})")
                    continue
                if not want_json:
                    return text
                try:
                    return check(extract_json(text))
                except (ValueError, KeyError, TypeError) as exc:
                    problems.append(f"malformed answer ({str(exc)[:300]})")
                    continue
        finally:
            client.close()
        msg = (f"{cfg.model} at {cfg.base_url}: no usable answer after {len(problems)} attempt(s): "
               + "; ".join(problems))
        msg = redact(msg, key)
        log.warning("EditLab LLM: %s", msg)
        raise LLMError(msg, refused)
