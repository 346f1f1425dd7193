"""Drive the system's headless Chromium (Debian's ``chromium`` package) over the DevTools protocol, for page tests.

``open_chromium(profile_dir)`` starts ``/usr/bin/chromium --headless`` with a fresh profile in ``profile_dir`` and
yields a ``Page`` connected to its one tab through the ``websockets`` package (no WebDriver, no downloaded browser).
``Page.errors`` collects, as text, every console error, uncaught exception and browser log entry of level error
(failed resource loads included) since the page was opened.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


class Page:
    """One tab: ``call`` sends a DevTools command and returns its result; events arriving meanwhile are kept."""

    def __init__(self, socket):
        self._socket = socket
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.errors: list[str] = []

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        """The first event named ``event`` not yet waited for (earlier ones count)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.events:
                if message.get("method") == event and not message.get("_waited"):
                    message["_waited"] = True
                    return message.get("params", {})
            self._receive(deadline, event)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"Chromium: no answer to {waiting_for}")
        message = json.loads(self._socket.recv(timeout=left))
        if "method" in message:
            self.events.append(message)
            self._note_error(message)
        return message

    def _note_error(self, message: dict) -> None:
        params = message.get("params", {})
        if message["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif message["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif message["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())


@contextmanager
def open_chromium(profile_dir: Path, width: int = 1280, height: int = 1000) -> Iterator[Page]:
    """A headless Chromium tab of ``width`` x ``height`` pixels, closed (and the browser ended) on leaving."""
    from websockets.sync.client import connect

    profile_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
        "--disable-gpu",
        "--mute-audio",
        "--no-first-run",
        "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit status {process.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            tabs = [t for t in json.load(answer) if t.get("type") == "page"]
        with connect(tabs[0]["webSocketDebuggerUrl"], max_size=None) as socket:
            page = Page(socket)
            for domain in ("Page", "Runtime", "Log"):
                page.call(f"{domain}.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
