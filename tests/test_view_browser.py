"""`modelport view` in a real browser: Debian's Chromium driven by Playwright draws the served graph.

The browser is the system one (``apt-get install chromium``, which .ci/run does; or the path in
MODELPORT_CHROMIUM); Playwright downloads nothing. Every request not to 127.0.0.1 is refused, so
Netron's telemetry and its country look-up never leave the machine. Screenshots are kept under
MODELPORT_ARTIFACTS when it is set, else in the test's tmp_path; the test prints where.

Netron's page asks for an update some months after its build date and then draws nothing: the
tests skip with that reason (every wait is bounded) rather than hang or fail.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .conftest import ROOT
from .models import tiny

UPDATE = "update"
LOAD_TIMEOUT_S = 60


def _chromium() -> str:
    path = os.environ.get("MODELPORT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get where apt is available)")
    return path


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("netron", reason="the view extra (netron) is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"], timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - a browser that will not start is an environment problem
            pytest.skip(f"{exe} did not start under Playwright: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def gpt2_onnx(tmp_path_factory) -> Path:
    import torch

    model = tiny.ours_from_hf(tiny.gpt2(seed=4))
    ids, mask = tiny.batch(seed=2)
    path = tmp_path_factory.mktemp("view") / "tiny-gpt2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"])
    return path


class Served:
    """`modelport view PATH --no-browser` in a subprocess, stopped with SIGTERM."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "modelport", "view", *args, "--no-browser"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"modelport view exited {self.proc.returncode}: {self.proc.stderr.read()}")
                continue
            m = re.search(r"http://127\.0\.0\.1:\d+", line)
            if m:
                return m.group(0)
        self.stop()
        raise AssertionError("modelport view printed no URL within 60 s")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return self.proc.returncode, "".join(rest)


def _artifact(name: str, tmp_path: Path) -> Path:
    base = Path(os.environ.get("MODELPORT_ARTIFACTS") or tmp_path)
    base.mkdir(parents=True, exist_ok=True)
    return base / name


def load_graph(page, url: str, timeout_s: float = LOAD_TIMEOUT_S):
    """Open ``url``, accept the cookie-consent dialog, and wait until the graph is drawn.
    Returns (UPDATE, message) when the page asks for an update instead, else ("graph", count)."""
    page.goto(url, timeout=30_000)
    end = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < end:
        if page.get_by_role("button", name="Update").is_visible():
            return UPDATE, page.locator("#message-text").text_content(timeout=5_000)
        accept = page.get_by_role("button", name="Accept")
        if accept.is_visible():
            accept.click(timeout=5_000)
        n = page.locator("svg g.node").count()
        if n and n == last and "spinner" not in (page.locator("body").get_attribute("class") or ""):
            return "graph", n
        last = n
        time.sleep(0.5)
    raise AssertionError(f"Netron drew no graph within {timeout_s:.0f} s ({last} nodes seen)")


def _page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith("http://127.0.0.1"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    # Netron replaces window.eval, which Playwright's own page queries use: keep the browser's
    context.add_init_script("const e = window.eval; Object.defineProperty(window, 'eval', "
                            "{get() { return e; }, set(v) {}, configurable: false});")
    return context, context.new_page(), blocked


def _close(context):
    context.unroute_all(behavior="ignoreErrors")
    context.close()


def _expected(onnx_path: Path):
    """What Netron draws for an ONNX graph: every node but Constants (it folds them into their
    users' attributes), plus one box per graph input and output."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    inputs = [i.name for i in m.graph.input if i.name not in init]
    nodes = [n for n in m.graph.node if n.op_type != "Constant"]
    return nodes, inputs, [o.name for o in m.graph.output]


def _check_drawn(page, onnx_path: Path, count: int) -> None:
    nodes, inputs, outputs = _expected(onnx_path)
    assert count == len(nodes) + len(inputs) + len(outputs)
    ops = Counter(n.op_type for n in nodes)
    assert ops["MatMul"] > 0 and ops["LayerNormalization"] > 0
    for name in [nodes[0].name, nodes[len(nodes) // 2].name, nodes[-1].name]:
        assert page.locator(f'[id="node-name-{name}"]').count() == 1, name
    for name in inputs:
        assert page.locator(f'[id="input-name-{name}"]').count() == 1, name


@pytest.mark.parametrize("graph_only", [False, True], ids=["full", "graph-only"])
def test_netron_draws_the_exported_graph(browser, gpt2_onnx, tmp_path, graph_only):
    served = Served(str(gpt2_onnx), *(["--graph-only"] if graph_only else []))
    try:
        context, page, blocked = _page(browser)
        try:
            state, value = load_graph(page, served.url)
            if state == UPDATE:
                pytest.skip(f"netron's page asks for an update ({value!r}): its build is too old; move the pin "
                            "in pyproject.toml to a newer netron")
            _check_drawn(page, gpt2_onnx, value)
            shot = _artifact(f"netron-tiny-gpt2{'-graph-only' if graph_only else ''}.png", tmp_path)
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            assert all(not u.startswith("http://127.0.0.1") for u in blocked)
        finally:
            _close(context)
    finally:
        rc, out = served.stop()
    assert rc == 130 and "stopped" in out     # stopped by a signal: interrupted


def test_an_expired_netron_page_is_seen_not_waited_on(browser, gpt2_onnx):
    """A year past the build date the page shows its update message: load_graph reports it at once."""
    served = Served(str(gpt2_onnx))
    try:
        context, page, _ = _page(browser)
        try:
            page.clock.install(time=datetime.now(timezone.utc) + timedelta(days=400))
            start = time.monotonic()
            state, value = load_graph(page, served.url, timeout_s=30)
            assert state == UPDATE and "update" in value.lower()
            assert time.monotonic() - start < 30
        finally:
            _close(context)
    finally:
        served.stop()
