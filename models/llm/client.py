"""A thin wrapper over the maintained ``openai`` package for any OpenAI-compatible chat endpoint (OpenAI, Ollama,
llama.cpp's server, vLLM, LM Studio ...), with what the nodes need on top:

- the API key is read from the environment variable NAMED by the user at call time and handed to the client only;
  it is never stored on the config (which is what workflows, history and node outputs carry), and every message
  this module raises or logs has it replaced by ``[redacted]``;
- bounded retries: a timeout, a connection error, HTTP 429 or 5xx, and (for ``chat_json``) an answer that is not
  the JSON asked for are retried ``max_retries`` times with a short fixed pause, then ``LLMError`` says what
  happened on each attempt;
- ``extract_json``: the first JSON object in an answer, fenced (```json ... ```) or bare, found by the JSON decoder
  itself (never eval);
- ``image_part``: a PIL image as a vision message part (a base64 PNG data URL), for models that take images.

``openai`` is imported when a client is first made, so the pack loads without it (the LLM nodes then say so).
Under ``EDITLAB_NETGUARD=loopback`` (the test suite) a base URL that is not loopback is refused before any dial.
"""
from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

log = logging.getLogger("editlab.llm")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NO_KEY = "no-key"  # what local servers get when no variable is named (the client requires a non-empty key)
RETRY_PAUSE = 0.25  # seconds between attempts


class LLMError(RuntimeError):
    """The endpoint could not give a usable answer; the message says why (key redacted)."""


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = "http://127.0.0.1:11434/v1"
    model: str = "llava"
    api_key_env: str = ""  # the NAME of the environment variable holding the key ("" = no key, local servers)
    temperature: float = 0.0
    timeout: float = 60.0
    max_retries: int = 2
    seed: int | None = 0
    vision: bool = True

    def public(self) -> dict:
        """What may be shown (history, outputs): everything here, which by construction holds no key."""
        return asdict(self)


def redact(text: str, secret: str | None) -> str:
    text = str(text)
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return text


def check_base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"base URL must be an http(s) URL with a host; got {url[:200]!r}")
    if os.environ.get("EDITLAB_NETGUARD", "").strip().lower() == "loopback":
        host = parts.hostname
        try:
            loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop = False
        if not loop:
            raise LLMError(f"endpoint {host} is not loopback and EDITLAB_NETGUARD=loopback (test run): not dialled")
    return url.strip().rstrip("/")


def read_key(env_name: str) -> str:
    if not env_name:
        return NO_KEY
    if not ENV_NAME.match(env_name):
        raise LLMError("api_key_env must be the NAME of an environment variable (letters, digits, '_'), "
                       "not the key itself")
    value = os.environ.get(env_name, "")
    if not value:
        raise LLMError(f"the environment variable {env_name} is not set (it should hold the API key)")
    return value


def extract_json(text: str):
    """The first JSON object in ``text`` (inside a ```json fence or bare); ValueError when there is none."""
    if not isinstance(text, str):
        raise ValueError("the answer is not text")
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    decoder = json.JSONDecoder()
    for candidate in fenced + [text]:
        for start in [m.start() for m in re.finditer(r"\{", candidate)]:
            try:
                obj, _ = decoder.raw_decode(candidate[start:])
            except json.JSONDecodeError:
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
        key = read_key(self.config.api_key_env)
        return openai, key, openai.OpenAI(base_url=check_base_url(self.config.base_url), api_key=key,
                                          timeout=self.config.timeout, max_retries=0)

    def chat(self, messages: list, max_tokens: int = 800) -> str:
        return self._attempts(messages, max_tokens, None)

    def chat_json(self, messages: list, check=None, max_tokens: int = 800) -> dict:
        """The answer's JSON object; ``check(obj)`` may raise ValueError to have a malformed answer retried."""
        return self._attempts(messages, max_tokens, check or (lambda obj: obj), want_json=True)

    def _attempts(self, messages, max_tokens, check, want_json=False):
        openai, key, client = self._client()
        cfg = self.config
        problems = []
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
            except openai.APIStatusError as exc:
                problems.append(f"HTTP {exc.status_code}")
                if exc.status_code in (429,) or exc.status_code >= 500:
                    continue
                break  # 4xx: asking again will not help
            except openai.APITimeoutError:
                problems.append(f"no answer within {cfg.timeout:g} s")
                continue
            except openai.APIConnectionError as exc:
                problems.append(f"connection failed ({redact(exc.__cause__ or exc, key)})")
                continue
            except (IndexError, AttributeError, TypeError) as exc:
                problems.append(f"an answer without a message ({type(exc).__name__})")
                continue
            if not want_json:
                return text
            try:
                return check(extract_json(text))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"malformed answer ({redact(exc, key)})")
                continue
        msg = (f"{cfg.model} at {cfg.base_url}: no usable answer after {len(problems)} attempt(s): "
               + "; ".join(problems))
        msg = redact(msg, key)
        log.warning("EditLab LLM: %s", msg)
        raise LLMError(msg)
