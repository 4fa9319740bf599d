"""Open the Snakemake HTML report in headless Chromium and say what a reader would see.

Why: the report is a JavaScript application in one HTML file; a file that exists can still
show a blank page. :func:`inspect_report` loads it in a real browser (Debian's ``chromium``),
drives it over the DevTools protocol through a pipe (no extra Python package, no network
port), and returns the script errors, every category and listed file (and whether each image was
displayed), and a screenshot of the last view.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltarad.runlog import UserError

# Flags from FACTS.md: run as root without a sandbox, offline, no first-run or sync traffic.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    "--remote-debugging-pipe",
)
# Walks the report as a reader would: every category of the Results menu, every subcategory,
# every file; opens each image (the eye icon) and checks that it decoded. Returns the
# categories and one record per listed file.
WALK_REPORT = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const links = () => [...document.querySelectorAll("a")];
  const byText = (t) => links().find((e) => e.innerText.trim() === t);
  const click = async (t) => {
    const a = byText(t);
    if (!a) return false;
    a.click();
    await sleep(250);
    return true;
  };
  const texts = () => links().map((e) => e.innerText.trim()).filter(Boolean);
  const general = new Set(["Workflow", "Statistics", "About", "Results"]);
  const categories = texts().filter((t) => !general.has(t));
  const items = [];
  const collect = async (category, subcategory) => {
    for (const row of [...document.querySelectorAll("table tbody tr")]) {
      const file = row.querySelector("td").innerText.trim();
      const eye = row.querySelector("a[iconname=eye]");
      let shown = null;
      if (eye && /\.(png|jpe?g|svg|gif)$/i.test(file)) {
        eye.click();
        await sleep(300);
        const name = file.split("/").pop();
        const img = [...document.querySelectorAll("img")].find((i) =>
          i.src.includes("filename=" + name + ";"));
        shown = img ? img.complete && img.naturalWidth > 0 : false;
      }
      items.push({ category, subcategory, file, shown });
    }
  };
  for (const category of categories) {
    await click("Results");
    if (!(await click(category))) continue;
    if (document.querySelector("table tbody tr")) {
      await collect(category, "");
      continue;
    }
    const subs = texts().filter((t) => t !== "Results" && t !== category);
    for (const sub of subs) {
      await click(category);
      if (await click(sub)) await collect(category, sub);
    }
  }
  return { categories, items };
})()
"""


@dataclass
class PageCheck:
    """What the browser saw: uncaught exceptions, console errors, the report's categories
    and its listed files (`file`, `category`, `subcategory`, `shown`: an image decoded in
    the page, None for non-images)."""

    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    screenshot: Path | None = None

    def shown(self, name: str) -> bool:
        """Whether a listed image whose path ends with `name` was displayed."""
        return any(i["file"].endswith(name) and i["shown"] for i in self.items)


def find_chromium() -> str | None:
    """The Chromium binary on PATH (Debian: chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class _Pipe:
    """Minimal DevTools-protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: Path) -> None:
        cmd_read, self._cmd_write = os.pipe()
        self._res_read, res_write = os.pipe()
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$@" 3<&{cmd_read} 4>&{res_write}',
                "chromium",
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(cmd_read, res_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(cmd_read)
        os.close(res_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._res_read, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise UserError(f"Chromium exited: {err[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send one command; keep events that arrive meanwhile; return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise UserError(f"Chromium {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        with contextlib.suppress(UserError, TimeoutError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_write)
        os.close(self._res_read)


def inspect_report(
    html: str | Path, screenshot: str | Path | None = None, binary: str | None = None
) -> PageCheck:
    """Load `html` in headless Chromium, walk every category and file, collect errors."""
    binary = binary or find_chromium()
    if binary is None:
        raise UserError("Chromium not found (Debian: apt-get install -y chromium)")
    if not Path(html).is_file():
        raise UserError(f"{html}: no such report file")
    url = Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="deltarad-chromium-") as profile:
        pipe = _Pipe(binary, Path(profile))
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            walk = (
                pipe.send(
                    "Runtime.evaluate",
                    {"expression": WALK_REPORT, "awaitPromise": True, "returnByValue": True},
                    session=session,
                )["result"].get("value")
                or {}
            )
            check = PageCheck(categories=walk.get("categories", []), items=walk.get("items", []))
            if screenshot is not None:
                shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                check.screenshot = Path(screenshot)
        finally:
            pipe.close()
    for event in pipe.events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            check.errors.append(
                details.get("exception", {}).get("description") or details.get("text", "")
            )
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            check.console.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
        elif event.get("method") == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                check.console.append(f"{entry.get('source')}: {entry.get('text')}")
    return check
