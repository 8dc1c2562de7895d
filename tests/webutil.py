"""What the browser tests share: a devnet-like network of real processes with the web UI in front of
it (:func:`web_net`), a real Chromium driven by Playwright (:func:`browser`), and
:func:`shot`, which saves a page's screenshots at the two sizes the UI is made for.

The network (one per test module, :class:`WebNet`): a mining node with the storage and compute
markets' test parameters (a block every ~100 ms, :mod:`tests.computeutil`), two storage providers,
a compute provider offering the AI runtime (the ``ai_runtime`` fixture of :mod:`tests.aiutil`),
and ``qoin web`` on the node's RPC, with a keystore folder and a data folder of its own in the
module's directory. The funded account of the test network (:data:`tests.framework.FUNDED`) has a
keystore there too, to send a new wallet its first coins with ``qoin tx send`` as a user does.

The browser is Debian's Chromium (``/usr/bin/chromium``, installed by ``make`` with apt-get; never
``playwright install``, which downloads a browser build of its own) through Playwright's sync API,
headless. Playwright starts Chromium with ``--no-sandbox`` itself (its ``chromium_sandbox`` is off
by default), so the same launch works as root. Without Chromium or Playwright the tests that ask
for the browser are skipped with the reason printed.

Screenshots go to ``$QOIN_TEST_ARTEFACTS/screenshots`` or, by default, ``test-artefacts/screenshots``
at the repository's root (ignored by git): ``NAME-1280x800.png`` and ``NAME-390x844.png``.

Use the fixtures from a test module by importing them with ``ai_runtime`` (which ``web_net``
needs): ``from tests.aiutil import ai_runtime`` and ``from tests.webutil import browser, web_net``
(a fixture is found by its name in the module).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.testclient import TestClient

from qoin.ai.runtime import RuntimeInfo
from qoin.process import Child
from qoin.web.app import create_app
from qoin.web.server import READY
from qoin.web.ui import WebConfig
from tests.cliutil import run_qoin
from tests.computeutil import COMPUTE, ComputeProvider, compute_network, start_compute_provider
from tests.framework import FUNDED, START_S, Network, Node, wait_until
from tests.keys import keypair_for
from tests.storageutil import RunningProvider, fund, start_provider, write_keystore

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium, which ``make`` installs."""
SIZES = ((1280, 800), (390, 844))
"""The sizes the UI is made for: a laptop and a phone."""
REPO = Path(__file__).parents[1]
PARAMS = replace(COMPUTE, staging_blocks=40, reveal_blocks=20, dispute_blocks=20)
"""The compute market's parameters: run budgets of the timeout plus ~4 s, reveal phases and
dispute windows of ~2 s (as in :mod:`tests.test_ai_e2e`)."""
STORAGE = [keypair_for(index=160 + i) for i in range(2)]
COMPUTE_KEY = keypair_for(index=162)
ACTION_MS = 30_000
"""How long a browser action or expectation may wait by default (a loaded test machine is slow)."""
ORIGIN = "http://127.0.0.1:8680"
"""The origin :func:`ui_client` sends its requests from."""


@contextmanager
def mining_node(workdir: Path) -> Iterator[Node]:
    """A mining node on the test network (no peers), in ``workdir``; stopped at the end."""
    net = Network(workdir)
    try:
        yield net.node("a", p2p=False, mine=True)
    finally:
        net.stop_all()


@contextmanager
def ui_client(rpc: str, consensus_rpc: str | None, home: Path) -> Iterator[TestClient]:
    """The web UI in process on ``rpc`` (keystores in ``home/keystore``, data in ``home/web``),
    requests sent from :data:`ORIGIN`."""
    config = WebConfig(
        rpc=rpc,
        consensus_rpc=consensus_rpc,
        keystore_dir=home / "keystore",
        datadir=home / "web",
    )
    with TestClient(create_app(config), base_url=ORIGIN) as made:
        yield made


@dataclass(frozen=True)
class WebNet:
    """The module's network and its web UI."""

    net: Network
    node: Node
    storage: list[RunningProvider]
    compute: ComputeProvider
    web: Child
    """The ``qoin web`` process."""
    base: str
    """The UI's origin, ``http://127.0.0.1:PORT`` (no slash at the end)."""
    keystore_dir: Path
    """Where the UI keeps the keystores it makes and imports."""
    funded_key: Path
    funded_password: Path

    def url(self, path: str = "/") -> str:
        """The UI's URL of ``path``."""
        return f"{self.base}{path}"

    @property
    def rpc(self) -> str:
        """The node's user RPC."""
        return self.node.user.url

    def send_funds(self, address: str, amount: int) -> str:
        """``qoin tx send`` from the funded account to ``address``, as a user gives a new wallet
        its first coins; the transaction's hash."""
        done = run_qoin(
            "tx", "send", "--key", str(self.funded_key), "--password-file",
            str(self.funded_password), "--to", address, "--amount", str(amount),
            "--rpc", self.rpc,
        )  # fmt: skip
        assert done.returncode == 0, f"qoin tx send: {done.stderr}{done.stdout}"
        return done.stdout.strip()

    def balance(self, address: str) -> int:
        account: dict[str, Any] = self.node.user.call("qoin_getAccount", address)
        return int(account["balance"])

    def wait_balance(self, address: str, at_least: int, timeout: float = 60) -> int:
        """Wait until ``address`` holds at least ``at_least`` Shor; its balance."""
        return wait_until(
            lambda: (held := self.balance(address)) >= at_least and held,
            timeout,
            0.2,
            f"{address} holds {at_least} Shor",
        )


def start_web(net: Network, node: Node, home: Path) -> tuple[Child, str]:
    """Start ``qoin web`` on ``node``'s RPC (keystores and data in ``home``), stopped with the
    network; the process and the UI's origin."""
    child = net.spawn(
        "web",
        ["web", "--rpc", node.user.url, "--consensus-rpc", node.rpc.url, "--port", "0",
         "--keystore-dir", str(home / "keystores"), "--datadir", str(home / "data")],
    )  # fmt: skip
    _, found, _ = child.wait_for(READY, START_S)
    return child, found[1].rstrip("/")


@pytest.fixture(scope="module")
def web_net(
    tmp_path_factory: pytest.TempPathFactory,
    ai_runtime: RuntimeInfo,
) -> Iterator[WebNet]:
    """The module's network and web UI (see the module docstring); every process stopped at the
    end."""
    workdir = tmp_path_factory.mktemp("web")
    with (
        pytest.MonkeyPatch.context() as patch,
        compute_network(workdir, patch, PARAMS) as (net, node),
    ):
        fund(node, *STORAGE, COMPUTE_KEY)
        start = functools.partial(
            start_compute_provider, memory="2GiB", extra=("--runtime", str(ai_runtime.path))
        )
        with ThreadPoolExecutor(max_workers=3) as pool:
            stored = [
                pool.submit(start_provider, net, node, f"storage-{i}", keypair, capacity="32MiB")
                for i, keypair in enumerate(STORAGE)
            ]
            computing = pool.submit(start, net, node.user.url, COMPUTE_KEY, name="compute")
            web, base = start_web(net, node, workdir / "web")
            providers = [future.result() for future in stored]
            compute = computing.result()
        key, password = write_keystore(workdir / "funded", FUNDED)
        yield WebNet(
            net, node, providers, compute, web, base, workdir / "web" / "keystores", key, password
        )


# -- the browser ----------------------------------------------------------------------------------


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (`make` installs Debian's chromium with apt-get)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (requirements-dev.txt; `make` installs it)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's) driven by Playwright; skipped with the reason when it cannot
    run here."""
    reason = missing_browser()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 (only where it runs)

    expect.set_options(timeout=ACTION_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Browser, width: int = SIZES[0][0], height: int = SIZES[0][1]) -> Page:
    """A page in a context of its own (a user with no cookies yet), ``width`` by ``height``."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(ACTION_MS)
    return context.new_page()


# -- screenshots ----------------------------------------------------------------------------------


def artefacts() -> Path:
    """Where screenshots go (see the module docstring), made if missing."""
    chosen = os.environ.get("QOIN_TEST_ARTEFACTS")
    folder = (Path(chosen) if chosen else REPO / "test-artefacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


CLIPPED = """() => [...document.querySelectorAll("main .card, main pre, header.top")]
    .filter((e) => !e.hidden && e.scrollWidth > e.clientWidth + 1)
    .map((e) => (e.id || (e.querySelector("h1, h2") || e).textContent.trim()).slice(0, 60))"""
"""A script naming the cards (and blocks of text) whose content is wider than they are."""


def shot(page: Page, name: str) -> list[Path]:
    """Save the whole page at each of :data:`SIZES` as ``NAME-WxH.png``; the files. The page's
    viewport is set back afterwards. At either size neither the page nor any of its cards may
    scroll sideways (the UI is made to be used there: nothing is cut off)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"screenshot name {name!r}: lower-case letters, digits and dashes")
    before = page.viewport_size
    saved = []
    try:
        for width, height in SIZES:
            page.set_viewport_size({"width": width, "height": height})
            path = artefacts() / f"{name}-{width}x{height}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
            overflow = page.evaluate("document.documentElement.scrollWidth") - width
            assert overflow <= 1, f"{name}: the page is {overflow} px wider than {width} px"
            clipped = page.evaluate(CLIPPED)
            assert not clipped, f"{name} at {width} px: cut off, scrolls sideways: {clipped}"
    finally:
        if before is not None:
            page.set_viewport_size(before)
    return saved


def session_token(page: Page) -> str:
    """The session token the page holds (``<meta name="qoin-session">``, which ``qoin.js`` sends
    back as the ``X-Qoin-Session`` header)."""
    token = page.get_attribute('meta[name="qoin-session"]', "content")
    assert token, "the page holds no session token"
    return token


def cookies_of(page: Page) -> httpx.Cookies:
    """The page's cookies, for an HTTP client that poses as another page holding them."""
    jar = httpx.Cookies()
    for cookie in page.context.cookies():
        jar.set(str(cookie.get("name")), str(cookie.get("value")))
    return jar


@contextmanager
def other_origin(html: str) -> Iterator[str]:
    """A second web server on 127.0.0.1 (another port: another origin of the same site, so the
    browser sends the UI's cookies with its requests) serving ``html`` at ``/``; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
