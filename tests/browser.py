"""Opening a report in a real browser: headless Chromium (Debian's ``chromium``), network off, driven over
the DevTools protocol. The report tests use it; run as a script it makes the README's screenshot:

    python tests/browser.py demo/report.html docs/report.png

The protocol runs over a pipe (``--remote-debugging-pipe``: commands on the browser's fd 3, replies
and events on fd 4, each a JSON message ending in a NUL byte), not a port: nothing listens on the
machine, nothing else can connect, and there is no port file to wait for or port to race for. Its
events are what a test needs to see: every request the page makes (Network), every console message
and uncaught exception (Runtime, Log), the load event (Page); a screenshot comes back as PNG bytes.

The network is off three ways: DevTools' offline emulation, a host resolver that resolves nothing, and
the report's own Content-Security-Policy; any request that is not the file itself or a data: URI is
reported all the same, so a report that tries one fails its test even though it could not leave.
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-pipe")
# A guard against a browser that hangs, never a measure of speed: every wait ends on an event first.
HANG_S = 180.0
WIDTH, HEIGHT = 1280, 900


def chromium() -> str | None:
    """The Chromium binary (Debian's package installs /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    """What the browser saw of a page."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, log errors
    facts: dict = field(default_factory=dict)  # what the page's DOM holds (``FACTS`` below)
    screenshot: bytes = b""  # PNG of the first screen

    def outside_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:"))]


# Read from the DOM after the load event.
FACTS = """JSON.stringify({
  charts: Array.from(document.querySelectorAll('figure.chart')).map(f => {
    const pic = f.querySelector('.picture svg, .picture img'); const box = pic ? pic.getBoundingClientRect() : null;
    return {id: f.id, picture: pic ? pic.tagName.toLowerCase() : null, width: box ? box.width : 0,
            height: box ? box.height : 0, rows: f.querySelectorAll('.figures tbody tr').length}; }),
  images: Array.from(document.images).map(i => ({loaded: i.complete && i.naturalWidth > 0, src: i.src.slice(0, 30)})),
  scripts: document.scripts.length,
  text: document.body.innerText,
  title: document.title
})"""


class _Pipe:
    """The DevTools protocol over the browser's pipe: commands out, replies and events in."""

    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd, self.buffer, self.next_id = write_fd, read_fd, b"", 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError(f"the browser did not answer within {HANG_S:.0f} s")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + HANG_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + HANG_S
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def _high_fd(fd: int) -> int:
    """``fd`` moved above 10, so that placing the browser's ends on 3 and 4 cannot overwrite it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def open_page(path: str | Path, width: int = WIDTH, height: int = HEIGHT, full_page: bool = False) -> PageResult:
    """Load the file ``path`` in headless Chromium with the network off; what it requested, logged and shows."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    to_browser_r, to_browser_w = map(_high_fd, os.pipe())
    from_browser_r, from_browser_w = map(_high_fd, os.pipe())

    def browser_ends() -> None:  # in the child: fd 3 reads commands, fd 4 writes replies (inheritable)
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)

    with tempfile.TemporaryDirectory(prefix="pathnas-chromium-") as profile:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                close_fds=False, preexec_fn=browser_ends)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r)
        try:
            return _load(pipe, Path(path).resolve().as_uri(), width, height, full_page)
        except (TimeoutError, ConnectionError) as err:
            proc.kill()
            raise RuntimeError(f"{err}; the browser's last lines:\n{proc.stderr.read().decode(errors='replace')[-2000:]}") \
                from None
        finally:
            try:
                pipe.send("Browser.close")
            except (OSError, RuntimeError, TimeoutError, ConnectionError):
                pass
            try:
                proc.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _load(pipe: _Pipe, url: str, width: int, height: int, full_page: bool) -> PageResult:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
        pipe.send(method, session=session)
    pipe.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                   "uploadThroughput": -1}, session)
    pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                     "mobile": False}, session)
    pipe.events.clear()  # only what the report does counts
    pipe.send("Page.navigate", {"url": url}, session)
    pipe.wait_for("Page.loadEventFired")
    facts = json.loads(pipe.send("Runtime.evaluate", {"expression": FACTS, "returnByValue": True},
                                 session)["result"]["value"])
    shot = {"format": "png"}
    if full_page:
        size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot.update(captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
    png = base64.b64decode(pipe.send("Page.captureScreenshot", shot, session)["data"])
    result = PageResult(facts=facts, screenshot=png)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            result.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return result


def is_blank(png: bytes) -> bool:
    """True when a screenshot shows (almost) nothing: one colour over 99.5 % of it."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    most = max((count for count, _ in colours), default=0)
    return most >= 0.995 * image.width * image.height


def screenshot_for_readme(report: Path, out: Path, width: int = 1320, height: int = 1250, side: int = 960) -> Path:
    """The top of ``report`` as the README shows it: a PNG of at most ``side`` pixels wide, palette colours
    (small in the repository)."""
    from PIL import Image

    page = open_page(report, width, height)
    if page.errors or page.outside_requests() or is_blank(page.screenshot):
        raise SystemExit(f"{report}: errors {page.errors}, requests {page.outside_requests()}")
    image = Image.open(io.BytesIO(page.screenshot)).convert("RGB")
    image.thumbnail((side, side * height // width), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, format="PNG", optimize=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/browser.py REPORT.html OUT.png")
    print(screenshot_for_readme(Path(sys.argv[1]), Path(sys.argv[2])))
