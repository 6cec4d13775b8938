"""Load a page in Debian's headless Chromium and tell what a person would see: a small DevTools client.

`load_page` starts ``chromium --headless`` on a loopback DevTools port with a throw-away profile,
opens the page, collects console errors, uncaught exceptions and failed loads, measures every
``<img>`` once decoded (natural size and the standard deviation of its drawn pixels), saves a
full-page screenshot, and stops the browser it started (by its pid).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

__all__ = ["PageLoad", "chromium_binary", "load_page"]

_MEASURE_IMAGES = """
(async () => {
  const out = [];
  for (const img of Array.from(document.images)) {
    let decoded = true;
    try { await img.decode(); } catch (e) { decoded = false; }
    const w = img.naturalWidth, h = img.naturalHeight;
    let std = 0;
    if (decoded && w > 0 && h > 0) {
      const canvas = document.createElement('canvas');
      canvas.width = w; canvas.height = h;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, w, h).data;
      let n = 0, sum = 0, sum2 = 0;
      for (let i = 0; i < data.length; i += 4) {
        const v = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
        n += 1; sum += v; sum2 += v * v;
      }
      std = Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2));
    }
    out.push({alt: img.alt, naturalWidth: w, naturalHeight: h, decoded: decoded,
              rendered: img.getBoundingClientRect().width, std: std});
  }
  return JSON.stringify(out);
})()
"""


@dataclass
class PageLoad:
    """What loading a page showed."""

    images: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and log entries of level error."""
    screenshot: Path | None = None
    title: str = ""


def chromium_binary() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise AssertionError(
            "Debian's chromium is not installed (make setup installs it: apt-get install chromium)"
        )
    return path


class _Session:
    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(method)


def _devtools_port(process: subprocess.Popen[str], timeout: float = 60.0) -> int:
    """The port Chromium announces on stderr (``DevTools listening on ws://127.0.0.1:PORT/...``)."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError(
                f"chromium exited with {process.returncode} before its DevTools port was open"
            )
        if "DevTools listening on ws://" in line:
            return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    raise AssertionError("chromium did not open its DevTools port")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {params.get('errorText')}")
    return errors


def load_page(path: Path, screenshot: Path, width: int = 1280, height: int = 900) -> PageLoad:
    """Load ``path`` in headless Chromium; save a full-page screenshot to ``screenshot``."""
    profile = Path(tempfile.mkdtemp(prefix="cpflow-chromium-"))
    process = subprocess.Popen(
        [
            chromium_binary(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _devtools_port(process)
        # Keep reading its stderr, so that a chatty browser never blocks on a full pipe.
        threading.Thread(
            target=lambda: [None for _ in iter(process.stderr.readline, "")], daemon=True
        ).start()
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = next(t for t in targets if t.get("type") == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
            session = _Session(socket)
            for domain in ("Page", "Runtime", "Log", "Network"):
                session.call(f"{domain}.enable")
            session.call("Page.navigate", url=path.resolve().as_uri())
            session.wait_for("Page.loadEventFired", timeout=120)
            measured = session.call(
                "Runtime.evaluate",
                expression=_MEASURE_IMAGES,
                awaitPromise=True,
                returnByValue=True,
                timeout=120,
            )
            images = json.loads(measured["result"]["value"])
            title = session.call("Runtime.evaluate", expression="document.title", returnByValue=True)
            shot = session.call(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True, timeout=120
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            # Anything the page logged while it was measured and photographed counts too.
            session.call("Runtime.evaluate", expression="1", returnByValue=True)
            return PageLoad(
                images=images,
                errors=_errors(session.events),
                screenshot=screenshot,
                title=str(title["result"].get("value", "")),
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
