"""A headless Chromium page driven over the DevTools protocol (websocket-client), for the browser tier.

Chromium is Debian's package (scripts/ensure_chromium.sh installs it where it can); nothing is downloaded.
The page keeps every console message and uncaught exception it sees, so tests can assert on them.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ensure_chromium() -> tuple[str | None, str]:
    """(path, "") when Chromium is there or could be installed; (None, why) otherwise."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                          timeout=1800)
    lines = done.stdout.strip().splitlines()
    last = lines[-1] if lines else done.stderr.strip()
    return (last, "") if done.returncode == 0 else (None, last)


class JSError(AssertionError):
    pass


class Page:
    def __init__(self, chromium: str, url: str, profile_dir: Path, width: int = 1600, height: int = 1000,
                 init_script: str = ""):
        import websocket

        from editlab.client.server import free_port

        self.console: list[dict] = []  # {"level", "text", "url"}
        self._id = 0
        port = free_port()
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile_dir}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline, target = time.monotonic() + 60, None
            while time.monotonic() < deadline and target is None:
                try:
                    pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                    target = next((p for p in pages if p["type"] == "page"), None)
                except OSError:
                    time.sleep(0.5)
            if target is None:
                raise RuntimeError("Chromium did not open a page")
            self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=120)
            for domain in ("Runtime", "Log", "Page"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            if init_script:  # runs before the page's own scripts on every load
                self.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
            self.send("Page.navigate", {"url": url})
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            frames = (params.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append({"level": params.get("type"), "text": text, "url": frames[0].get("url", ""),
                                 "stack": " ".join(f.get("url", "") for f in frames)})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            frames = (details.get("stackTrace") or {}).get("callFrames") or [{}]
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            self.console.append({"level": "exception", "text": text, "url": details.get("url", ""),
                                 "stack": " ".join(f.get("url", "") for f in frames)})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"level": entry.get("level"), "text": entry.get("text", ""),
                                 "url": entry.get("url", ""), "stack": ""})

    def evaluate(self, expression: str, timeout: float = 120):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JSError((details.get("exception") or {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or expression}")
            time.sleep(0.25)

    def screenshot(self, path: Path, quality: int | None = None) -> Path:
        params = {"format": "jpeg", "quality": quality} if quality else {"format": "png"}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors_from(self, url_part: str, since: int = 0) -> list[dict]:
        """Console errors and uncaught exceptions raised by scripts (or loads) whose URL contains ``url_part``."""
        return [m for m in self.console[since:] if m["level"] in ("error", "exception") and
                url_part in m["url"] + " " + m["stack"]]

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
