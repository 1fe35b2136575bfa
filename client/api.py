"""A small client for ComfyUI's HTTP API (/prompt, /history, /view, /object_info) and its /ws progress feed."""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from . import ClientError

log = logging.getLogger("editlab.api")

MAX_DOWNLOAD_BYTES = 2 * 1024**3  # one output file; a guard against a runaway response


class PromptFailed(ClientError):
    """The server accepted the prompt but running it failed (an execution error or an interruption)."""


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClientError(f"server URL must look like http://HOST:PORT; got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self._object_info = None

    # -- plain HTTP -------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body=None, timeout: float | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            raise ServerRejected(exc.code, payload) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the ComfyUI server at {self.url}: {reason}") from None

    def get_json(self, path: str, timeout: float | None = None):
        return json.loads(self._request("GET", path, timeout=timeout))

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            self._request("GET", "/system_stats", timeout=timeout)
            return True
        except ClientError:
            return False

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=max(self.timeout, 120))
        return self._object_info

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    # -- prompts ----------------------------------------------------------------------------------------------
    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            answer = json.loads(self._request("POST", "/prompt", body))
        except ServerRejected as exc:
            raise ClientError("the server rejected the workflow:\n" + exc.describe()) from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 3600.0,
             on_progress: Callable[[dict], None] | None = None) -> dict:
        """Follow the prompt until it ends; return its history entry. Progress comes from /ws when available."""
        ws = self._open_ws()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                entry = self.history(prompt_id)
                if entry is not None and entry.get("status", {}).get("completed") is not None:
                    if entry.get("status", {}).get("status_str") == "error" or not entry["status"]["completed"]:
                        raise PromptFailed(describe_failure(entry))
                    return entry
                if ws is not None:
                    self._pump_ws(ws, prompt_id, on_progress, until=min(deadline, time.monotonic() + 1.0))
                else:
                    time.sleep(0.25)
        finally:
            if ws is not None:
                ws.close()
        raise ClientError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def _open_ws(self):
        try:
            import websocket  # websocket-client; optional, progress falls back to polling /history
        except ImportError:
            return None
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=5)
            ws.settimeout(0.5)
            return ws
        except Exception as exc:  # noqa: BLE001 - any socket failure just means no live progress
            log.debug("no websocket progress: %s", exc)
            return None

    @staticmethod
    def _pump_ws(ws, prompt_id, on_progress, until):
        import websocket

        while time.monotonic() < until:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                return
            except Exception:  # noqa: BLE001 - a closed socket: history polling carries on
                return
            if not isinstance(raw, str):
                continue  # binary preview frames
            msg = json.loads(raw)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if on_progress:
                on_progress(msg)
            if msg.get("type") in ("execution_success", "execution_error", "execution_interrupted"):
                return

    def upload(self, path: Path, subfolder: str = "") -> str:
        """Put a local image into the server's input folder (POST /upload/image); returns its name there."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read upload {path}: {exc.strerror or exc}") from None
        boundary = uuid.uuid4().hex
        parts = [(b'Content-Disposition: form-data; name="image"; filename="' + path.name.encode() + b'"\r\n'
                  b"Content-Type: application/octet-stream\r\n\r\n" + data)]
        for key, value in (("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)):
            parts.append(f'Content-Disposition: form-data; name="{key}"\r\n\r\n{value}'.encode())
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        body += b"--" + boundary.encode() + b"--\r\n"
        req = urllib.request.Request(self.url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=max(self.timeout, 120)) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientError(f"the server refused the upload of {path.name}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"cannot reach the ComfyUI server at {self.url}: {getattr(exc, 'reason', exc)}") \
                from None
        return answer["name"]

    # -- outputs ----------------------------------------------------------------------------------------------
    def view(self, file_ref: dict) -> bytes:
        """The bytes of one output file ({filename, subfolder, type}) through /view."""
        query = urllib.parse.urlencode({"filename": file_ref["filename"], "subfolder": file_ref.get("subfolder", ""),
                                        "type": file_ref.get("type", "output")})
        data = self._request("GET", f"/view?{query}", timeout=max(self.timeout, 300))
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ClientError(f"output {file_ref['filename']} is larger than {MAX_DOWNLOAD_BYTES} bytes")
        return data

    def download(self, file_ref: dict, dest_dir: Path) -> Path:
        data = self.view(file_ref)
        name = Path(file_ref["filename"]).name  # never let a server path escape dest_dir
        sub = Path(*[p for p in Path(file_ref.get("subfolder", "")).parts if p not in ("..", "/")])
        out = dest_dir / sub / name
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
        return out


def output_files(history_entry: dict) -> list[tuple[str, dict]]:
    """Every file an output node reported: (node id, {filename, subfolder, type})."""
    found = []
    for node_id, outputs in history_entry.get("outputs", {}).items():
        for value in outputs.values():
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict) and "filename" in item:
                        found.append((node_id, item))
    return found


def text_outputs(history_entry: dict) -> list[tuple[str, int, str]]:
    """Every text an output node showed (e.g. PreviewText): (node id, index, text)."""
    found = []
    for node_id, outputs in history_entry.get("outputs", {}).items():
        for i, value in enumerate(outputs.get("text") or []):
            if isinstance(value, str):
                found.append((node_id, i, value))
    return found


def describe_failure(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            return f"the prompt was interrupted at node {data.get('node_id')}"
    return "the prompt did not complete"


class ServerRejected(ClientError):
    def __init__(self, status: int, payload: bytes):
        self.status = status
        try:
            self.body = json.loads(payload)
        except ValueError:
            self.body = payload.decode(errors="replace")
        super().__init__(f"HTTP {status}: {self.describe()}")

    def describe(self) -> str:
        body = self.body
        if not isinstance(body, dict):
            return str(body)[:2000]
        lines = []
        err = body.get("error")
        if isinstance(err, dict):
            lines.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
        for node_id, node_err in (body.get("node_errors") or {}).items():
            for e in node_err.get("errors", []):
                lines.append(f"  node {node_id} ({node_err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        return "\n".join(lines) or json.dumps(body)[:2000]
