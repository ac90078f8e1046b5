"""Open a page in headless Chromium as a person would see it: its text, whether each image loaded, the requests it
made, and a full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ended by a NUL
byte on file descriptors 3 and 4), so nothing beyond the standard library and the browser itself is needed.
Install the browser with ``apt-get install chromium`` (Debian), or name its binary in ``$CHROMIUM``.
"""

from __future__ import annotations

import base64
import fcntl
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

from pipeline.errors import PipelineError

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install Chromium (Debian: `apt-get install -y chromium`) or set $CHROMIUM to its binary"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
# Runs the browser (argv[3:]) with the pipe ends argv[1] and argv[2] on the descriptors 3 and 4 that
# --remote-debugging-pipe reads and writes (Debian's /usr/bin/chromium is a shell script, so exec it as given).
ON_PIPE_FDS = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)
# Chromium cannot capture a texture taller than this.
MAX_SCREENSHOT_HEIGHT = 16384
# What the page says about itself once loaded: its text and each image's state.
PAGE_STATE = """JSON.stringify({
  title: document.title,
  text: document.body.innerText,
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                 height: i.naturalHeight})),
})"""


@dataclass
class Page:
    """What Chromium showed: the title and text, every image (alt, complete, natural size), every URL requested."""

    title: str
    text: str
    images: list[dict]
    requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[str]:
        """The alt text of every image that did not load."""
        return [image["alt"] for image in self.images if not image["complete"] or image["width"] == 0]


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM``, else the first of :data:`BINARIES` on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for path in map(shutil.which, BINARIES) if path), None)


class _DevTools:
    """The DevTools protocol over Chromium's pipe: commands by id, events kept as they arrive."""

    def __init__(self, to_browser: int, from_browser: int, timeout: float) -> None:
        self.write_fd, self.read_fd, self.timeout = to_browser, from_browser, timeout
        self.buffer, self.next_id, self.events = b"", 0, []

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium: {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self._receive())

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout} s")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (did it start? try running it by hand)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def _above_4(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more; ``fd`` is closed."""
    duplicate = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return duplicate


def open_page(path: Path, screenshot: Path | None = None, width: int = 1280, timeout: float = 60.0) -> Page:
    """Load the local file ``path`` in headless Chromium, wait for its load event, read what it shows and, with
    ``screenshot``, save a full-page PNG there. A missing browser is a :class:`PipelineError` saying how to install
    one."""
    binary = find_chromium()
    if binary is None:
        raise PipelineError(f"no Chromium found to open {path}: {INSTALL_HINT}")
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()
    # The ends the browser gets are moved above 9, so that putting them on 3 and 4 cannot overwrite one another.
    to_browser_read, from_browser_write = (_above_4(fd) for fd in (to_browser_read, from_browser_write))
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            sys.executable,
            "-c",
            ON_PIPE_FDS,
            str(to_browser_read),
            str(from_browser_write),
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
        ]
        process = subprocess.Popen(
            command,
            pass_fds=(to_browser_read, from_browser_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        try:
            return _inspect(_DevTools(to_browser_write, from_browser_read, timeout), path, screenshot, width)
        finally:
            os.close(to_browser_write)
            os.close(from_browser_read)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _inspect(devtools: _DevTools, path: Path, screenshot: Path | None, width: int) -> Page:
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page.enable", "Network.enable"):
        devtools.call(domain, session)
    devtools.call(
        "Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1, mobile=False
    )
    devtools.call("Page.navigate", session, url=Path(path).resolve().as_uri())
    devtools.wait_for("Page.loadEventFired")
    state = json.loads(
        devtools.call("Runtime.evaluate", session, expression=PAGE_STATE, returnByValue=True)["result"]["value"]
    )
    requests = [
        event["params"]["request"]["url"]
        for event in devtools.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    page = Page(state["title"], state["text"], state["images"], requests)
    if screenshot is not None:
        size = devtools.call("Page.getLayoutMetrics", session)["cssContentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": size["width"],
            "height": min(size["height"], MAX_SCREENSHOT_HEIGHT),
            "scale": 1,
        }
        image = devtools.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(image["data"]))
        page.screenshot = screenshot
    devtools.call("Browser.close")
    return page
