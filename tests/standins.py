"""Loopback HTTP stand-ins for the tests (World-To-Image, VIEScore): real servers on 127.0.0.1 in a thread.

- ``StandIn``: a ThreadingHTTPServer whose answers are scripted per path: ``routes[path] = fn(handler)`` or a
  ``Reply``; every request is recorded (method, path, parsed JSON body).
- ``chat_standin``: an OpenAI-compatible ``/v1/chat/completions`` answering from a script of ``Reply`` / str / dict;
  the request's Authorization header is recorded so a test can check the key was sent (and nowhere else).
- ``fake_internet``: maps made-up public host names onto stand-ins through the guarded fetcher's resolver/opener
  seams, so redirects and address checks run as on the internet while every socket dials loopback only.
"""
from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    trickle: float = 0.0  # seconds between body chunks of 16 bytes (a slow body)
    length: bool = True  # send Content-Length (False: the body ends when the connection closes)
    header_trickle: float = 0.0  # seconds between single bytes of a header that never ends (a header trickle)


def png_bytes(w=16, h=16, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


class StandIn:
    def __init__(self):
        self.routes: dict = {}
        self.requests: list = []
        self.trickles_ended: list = []  # when each header trickle saw its client go away
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                path = self.path.split("?")[0]
                outer.requests.append({"method": method, "path": self.path, "body": body,
                                       "headers": dict(self.headers)})
                route = outer.routes.get(path, outer.routes.get("*"))
                reply = route(self) if callable(route) else route
                if reply is None:
                    reply = Reply(404, b"not found")
                self._send(reply)

            def _send(self, r: Reply):
                if r.delay:
                    time.sleep(r.delay)
                if r.header_trickle:
                    self._trickle_headers(r.header_trickle)
                    return
                body = r.body
                ctype = r.headers.get("Content-Type")
                if isinstance(body, (dict, list)):
                    body, ctype = json.dumps(body).encode(), ctype or "application/json"
                elif isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response(r.status)
                    for k, v in r.headers.items():
                        if k != "Content-Type":
                            self.send_header(k, v)
                    if ctype:
                        self.send_header("Content-Type", ctype)
                    if r.length:
                        self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if r.trickle:
                        for i in range(0, len(body), 16):
                            self.wfile.write(body[i:i + 16])
                            self.wfile.flush()
                            time.sleep(r.trickle)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _trickle_headers(self, pause: float, longest: float = 30.0):
                """A status line, then one header byte every ``pause`` seconds until the client goes away."""
                end = time.monotonic() + longest
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
                    self.wfile.flush()
                    while time.monotonic() < end:
                        time.sleep(pause)
                        self.wfile.write(b"a")
                        self.wfile.flush()
                except OSError:
                    pass
                outer.trickles_ended.append(time.monotonic())
                self.close_connection = True

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def chat_completion(content: str, model: str = "stand-in") -> dict:
    return {"id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ChatStandIn(StandIn):
    """``/v1/chat/completions`` answering each call with the next scripted item (the last one repeats), or with
    ``responder(messages)`` when one is given."""

    def __init__(self, script=None, responder=None):
        super().__init__()
        self.script = list(script or [])
        self.responder = responder
        self.calls = 0
        self.routes["/v1/chat/completions"] = self._answer
        self.routes["/v1/models"] = Reply(200, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    @property
    def base_url(self):
        return self.url + "/v1"

    def chats(self):
        return [r for r in self.requests if r["path"].startswith("/v1/chat/completions")]

    def _answer(self, handler):
        self.calls += 1
        if self.responder is not None:
            item = self.responder(json.loads(json.dumps(self.requests[-1]["body"])))
        else:
            item = self.script[min(self.calls - 1, len(self.script) - 1)]
        if isinstance(item, Reply):
            return item
        if isinstance(item, dict):
            item = json.dumps(item)
        return Reply(200, chat_completion(item))


class FakeInternet:
    """Made-up public names (resolving to documentation-free public IPs) served by loopback stand-ins."""

    def __init__(self, monkeypatch):
        from editlab.models import fetch

        self.hosts: dict[str, tuple[str, int]] = {}  # name -> (fake public ip, loopback port)
        self._ports: dict[str, int] = {}
        real_resolve, real_open = fetch._resolve, fetch._open

        def resolve(host, port):
            if host in self.hosts:
                ip = self.hosts[host][0]
                return [(2, 1, 6, "", (ip, port))]
            return real_resolve(host, port)

        def open_(ip, port, timeout):
            if ip in self._ports:
                return real_open("127.0.0.1", self._ports[ip], timeout)
            return real_open(ip, port, timeout)

        monkeypatch.setattr(fetch, "_resolve", resolve)
        monkeypatch.setattr(fetch, "_open", open_)
        monkeypatch.delenv("EDITLAB_NETGUARD", raising=False)  # the socket guard still refuses anything non-loopback

    def add(self, name: str, standin: StandIn, ip: str) -> str:
        self.hosts[name] = (ip, standin.port)
        self._ports[ip] = standin.port
        return f"http://{name}"
