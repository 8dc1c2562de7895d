"""The web UI in a real browser (Debian's Chromium driven by Playwright, :mod:`tests.webutil`) in
front of a devnet-like network of real processes: a mining node, two storage providers, a compute
provider offering the AI runtime, ``qoin web``.

One user (one browser context, so one session) goes through the UI as a person would, in order:

1. the explorer follows new heads live;
2. a wallet is created in the page, receives its first coins from the funded account (``qoin tx
   send``, as a user is given coins), sends a transfer and sees it confirmed;
3. a file is uploaded through the storage page (with its progress) and downloaded back identical;
4. a compute job runs and its output is shown;
5. a dataset is prepared from the compute page, then an AI training run on it starts and its loss
   is shown as it falls (a chart spanning its card, and a table);
6. a site is published and opened by its name;
7. requests without the session token are refused: from the page's own context (``fetch`` without
   the token header) and from another origin (a page on another port posting with the user's
   cookies, and a client that even knows the token).

Every page is saved at 1280x800 and 390x844 (:func:`tests.webutil.shot`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.aiutil import ai_runtime  # noqa: F401 (the fixture)
from tests.framework import wait_until
from tests.keys import keypair_for
from tests.webutil import (  # noqa: F401 (fixtures)
    WebNet,
    browser,
    cookies_of,
    missing_browser,
    new_page,
    other_origin,
    session_token,
    shot,
    web_net,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser())),
]

PASSWORD = "browser-test-password"
GIFT = 10**11
"""Shor the funded account sends the new wallet."""
RECIPIENT = str(keypair_for(index=163).address)
PAID = 123_456
"""Shor the wallet sends in the page."""
CONFIRM_S = 60.0
TASK_MS = 180_000
"""How long a storage, compute or training task may take in the page."""
EPOCHS = 3
SITE = "browser-site"


@pytest.fixture(scope="module")
def user(browser: Browser) -> Iterator[Page]:  # noqa: F811 (the fixture)
    """The one user's page (its browser context keeps the session across the tests)."""
    page = new_page(browser)
    try:
        yield page
    finally:
        page.context.close()


def reload_until(page: Page, text: str | re.Pattern[str], timeout: float = CONFIRM_S) -> None:
    """Reload ``page`` until its main content shows ``text`` (a page that is not live)."""

    def shown() -> bool:
        page.reload()
        found = page.locator("main").inner_text()
        return bool(re.search(text, found) if isinstance(text, re.Pattern) else text in found)

    wait_until(shown, timeout, 0.5, f"{page.url} shows {text!r}")


def is_emoji(char: str) -> bool:
    """Whether ``char`` is drawn from an emoji font: pictographs, dingbats, misc symbols and the
    emoji variation selector — not punctuation such as the ``…`` of a shortened address (the
    header shows one when a wallet of the session is unlocked, which an earlier test in the
    worker may have done)."""
    code = ord(char)
    return code >= 0x1F000 or 0x2600 <= code <= 0x27BF or code == 0xFE0F


def test_the_explorer_follows_new_heads(user: Page, web_net: WebNet) -> None:  # noqa: F811
    user.goto(web_net.url("/"))
    height = user.locator("#head-height")
    first = int(height.inner_text())
    expect(user.locator(".live.on")).to_be_visible()  # the head subscription is open
    # New heads arrive over the subscription: the height changes without a reload.
    expect(height).not_to_have_text(str(first))
    assert int(height.inner_text()) > first
    expect(user.locator("#blocks tbody tr")).not_to_have_count(0)
    # The header's lock is drawn (an SVG), not an emoji that renders as a box without an emoji font.
    account = user.locator("header .account")
    expect(account.locator("svg")).to_be_visible()
    assert not any(is_emoji(c) for c in account.inner_text()), account.inner_text()
    # Heads that arrive merged leave no gap: the missing heights are fetched. Dropping the newest
    # rows makes the next head such a gap, whatever the timing.
    rows = "#blocks tbody tr"
    heights = f"[...document.querySelectorAll('{rows}')].map((r) => Number(r.cells[0].innerText))"
    user.evaluate(f"document.querySelectorAll('{rows}').forEach((r, i) => i < 3 && r.remove())")
    top = user.evaluate(heights)[0]
    wait_until(lambda: user.evaluate(heights)[0] > top + 3, 30, 0.1, "a new head past the gap")
    shown = user.evaluate(heights)
    assert shown == list(range(shown[0], shown[0] - len(shown), -1)), shown
    assert len(shown) >= 12, shown
    shot(user, "explorer")


@dataclass(frozen=True)
class Wallet:
    """The user's wallet, created and funded in the page (:func:`wallet`)."""

    address: str
    keystore: Path
    funding: str
    """The hash of the transaction that gave it its first coins."""


@pytest.fixture(scope="module")
def wallet(user: Page, web_net: WebNet) -> Wallet:  # noqa: F811
    """The user creates a wallet in the page (it stays unlocked in the session) and is given its
    first coins from the funded account with ``qoin tx send``, as a user is."""
    user.goto(web_net.url("/wallet"))
    shot(user, "wallet-locked")
    create = user.locator("#create")
    create.locator('input[name="password"]').fill(PASSWORD)
    create.locator('input[name="confirm"]').fill(PASSWORD)
    create.get_by_role("button", name="Create").click()
    address_link = user.locator('[data-test="wallet-address"]')
    expect(address_link).to_be_visible()
    address = address_link.inner_text().strip()
    assert address.startswith("qoin1")
    keystore = web_net.keystore_dir / f"{address}.json"
    assert keystore.is_file()  # saved where the UI keeps its keystores
    expect(user.locator("#balance")).to_have_text("0 Shor")
    funding = web_net.send_funds(address, GIFT)
    web_net.wait_balance(address, GIFT)
    return Wallet(address, keystore, funding)


def test_a_wallet_is_created_funded_and_sends_a_transfer(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
) -> None:
    user.goto(web_net.url("/wallet"))
    expect(user.locator("#balance")).to_have_text(f"{web_net.balance(wallet.address):,} Shor")
    shot(user, "wallet")
    # A transfer: the fee is shown before sending; the page goes to the transaction.
    paid_before = web_net.balance(RECIPIENT)
    send = user.locator("#send")
    expect(send.locator("#fee")).to_have_text(re.compile(r"^[\d,]+ Shor$"))
    send.locator('input[name="to"]').fill(RECIPIENT)
    send.locator('input[name="amount"]').fill(str(PAID))
    send.get_by_role("button", name="Send").click()
    user.wait_for_url(re.compile(r"/tx/[0-9a-f]{64}$"))
    tx = user.url.rsplit("/", 1)[1]
    reload_until(user, "success")
    assert f"{PAID:,} Shor" in user.locator("main").inner_text()
    shot(user, "transaction")
    assert web_net.balance(RECIPIENT) == paid_before + PAID
    # The wallet's history lists it, and the coins it was given.
    user.goto(web_net.url("/wallet"))
    expect(user.locator(f'main a[href="/tx/{tx}"]').first).to_be_visible()
    expect(user.locator(f'main a[href="/tx/{wallet.funding}"]').first).to_be_visible()
    shot(user, "wallet-history")
    # Locked, the page offers to unlock it: a wrong password is refused, the right one opens it.
    user.locator('form[data-api="/api/wallet/lock"]').get_by_role("button", name="Lock").click()
    unlock = user.locator("#unlock")
    expect(unlock.locator('select[name="address"]')).to_have_value(wallet.address)
    expect(user.locator("header .account")).to_contain_text("locked")
    unlock.locator('input[name="password"]').fill("not the password")
    unlock.get_by_role("button", name="Unlock").click()
    expect(unlock.locator("[data-result]")).to_have_text("wrong password")
    shot(user, "wallet-unlock")
    unlock.locator('input[name="password"]').fill(PASSWORD)
    unlock.get_by_role("button", name="Unlock").click()
    expect(user.locator('[data-test="wallet-address"]')).to_have_text(wallet.address)


def finished(page: Page, timeout_ms: float = TASK_MS) -> dict[str, Any]:
    """Wait on a task page (``/tasks/ID``, which follows the task live) until the task is done;
    its result, as the page shows it."""
    state = page.locator("#task-state")
    expect(state).to_have_text(re.compile(r"^(done|failed)$"), timeout=timeout_ms)
    assert state.inner_text() == "done", page.locator("main").inner_text()
    expect(page.locator("#task-summary dt").first).to_be_visible()  # its plain fields, listed
    result = page.locator("#task-result")  # the whole of it, folded away
    expect(result).not_to_be_empty()
    answer: dict[str, Any] = json.loads(result.text_content() or "")
    return answer


def test_a_file_is_uploaded_and_downloaded_back(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
    tmp_path: Path,
) -> None:
    data = random.Random(17).randbytes(300_000)
    source = tmp_path / "photo.bin"
    source.write_bytes(data)
    user.goto(web_net.url("/storage"))
    form = user.locator("#upload-form")
    form.locator('input[name="file"]').set_input_files(source)
    shot(user, "storage")
    form.get_by_role("button", name="Store").click()
    # The bytes go to the UI with a progress bar, then the task page follows the market's stages.
    user.wait_for_url(re.compile(r"/tasks/[^/]+$"))
    stored = finished(user)
    shot(user, "storage-task")
    cid = stored["cid"]
    assert re.fullmatch(r"[0-9a-f]{64}", cid), stored
    # The wallet's files list it; its page shows the deal shard by shard.
    user.goto(web_net.url("/storage"))
    expect(user.locator(f'a[href="/storage/{cid}"]')).to_be_visible()
    user.goto(web_net.url(f"/storage/{cid}"))
    expect(user.locator("main")).to_contain_text("bytes (encrypted)")
    shot(user, "storage-content")
    with user.expect_download(timeout=TASK_MS) as download:
        user.locator("#download").click()
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(saved)
    assert saved.read_bytes() == data
    expect(user.locator("#action-result")).to_have_text("downloaded")


def test_a_compute_job_runs_and_its_output_is_shown(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
) -> None:
    user.goto(web_net.url("/compute"))
    shot(user, "compute")
    form = user.locator('form[data-api="/api/compute/run"]')
    form.locator('input[name="command"]').fill(
        "sh -c 'echo hello from the browser; echo 42 > /outputs/answer.txt'"
    )
    form.locator('input[name="memory"]').fill("256MiB")
    form.locator('input[name="timeout"]').fill("60")
    form.get_by_role("button", name="Run").click()
    user.wait_for_url(re.compile(r"/tasks/[^/]+$"))
    expect(user.locator("#task-output")).to_contain_text("hello from the browser", timeout=TASK_MS)
    finished(user)
    expect(user.locator("#task-phases")).to_contain_text("deal")
    shot(user, "compute-task")
    with user.expect_download() as download:
        user.get_by_role("button", name=re.compile(r"Download .*answer\.txt")).click()
    assert download.value.path().read_text() == "42\n"


def test_an_ai_training_run_shows_its_loss(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
) -> None:
    # The dataset, prepared and stored with the user's wallet from the compute page.
    user.goto(web_net.url("/compute"))
    prepare = user.locator("#prepare-form")
    prepare.locator('select[name="source"]').select_option("sklearn:digits")
    expect(prepare.locator('input[name="file"]')).to_be_hidden()
    prepare.get_by_role("button", name="Prepare").click()
    user.wait_for_url(re.compile(r"/tasks/[^/]+$"))
    dataset = finished(user)["cid"]
    # The task offers to train on it: the training form has the dataset chosen.
    user.locator("#task-train").click()
    user.wait_for_url(web_net.url(f"/compute?data={dataset}"))
    form = user.locator("#train-form")
    expect(form.locator('select[name="data"]')).to_have_value(dataset)
    expect(user.locator("#catalog")).to_contain_text("digits")
    shot(user, "compute-datasets")
    form.locator('select[name="model"]').select_option("mlp")
    form.locator('input[name="epochs"]').fill(str(EPOCHS))
    form.locator('input[name="lr"]').fill("0.01")
    form.locator('input[name="timeout"]').fill("120")
    form.get_by_role("button", name="Train").click()
    user.wait_for_url(re.compile(r"/tasks/[^/]+$"))
    # The loss shows as the epochs come, before the run ends.
    epochs = user.locator("#task-epochs tr")
    expect(user.locator("#task-loss-card")).to_be_visible(timeout=TASK_MS)
    expect(epochs.nth(1)).to_contain_text(f"1/{EPOCHS}")
    trained = finished(user)
    expect(epochs).to_have_count(EPOCHS + 1)  # the header and one row an epoch
    losses = [float(epochs.nth(i).locator("td").nth(1).inner_text()) for i in (1, EPOCHS)]
    assert losses[-1] < losses[0], losses
    assert trained["epochs"] == EPOCHS and trained["accuracy"] >= 0.8, trained
    # The chart spans its card, its axes labelled.
    chart = user.locator("#task-loss")
    expect(chart.locator("polyline.loss")).to_have_count(1)
    expect(chart.locator("text.axis-label")).to_have_text(["epoch", "loss"])
    card, line = user.locator("#task-loss-card").bounding_box(), chart.locator("polyline.loss")
    drawn = line.bounding_box()
    assert card is not None and drawn is not None
    assert drawn["width"] > 0.75 * card["width"], (drawn, card)
    shot(user, "train-task")


def write_site(folder: Path, greeting: str) -> Path:
    """A small site: an index page with a style sheet and a script, a page in a sub-folder, a
    folder without an index page."""
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(
        "<!doctype html><html><head><title>Browser site</title>"
        '<link rel="stylesheet" href="style.css"><script src="app.js"></script></head>'
        f'<body><h1 id="greeting">{greeting}</h1><a id="docs" href="docs/">docs</a></body></html>'
    )
    (folder / "style.css").write_text("h1 { color: rgb(0, 128, 0); }\n")
    (folder / "app.js").write_text(
        'addEventListener("DOMContentLoaded", () => document.body.dataset.ran = "yes");\n'
    )
    (folder / "docs" / "index.html").write_text("<!doctype html><p id=doc>the docs page</p>")
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "notes.txt").write_text("a folder without an index page\n")
    return folder


def publish(page: Page, web_net: WebNet, folder: Path, name: str) -> dict[str, Any]:  # noqa: F811
    """Publish ``folder`` as ``name`` through the sites page; the task's result."""
    page.goto(web_net.url("/sites"))
    form = page.locator("#publish-form")
    form.locator('input[name="folder"]').set_input_files(folder)
    form.locator('input[name="name"]').fill(name)
    expect(page.locator("#publish-summary")).to_contain_text("5 files")
    form.get_by_role("button", name="Publish").click()
    page.wait_for_url(re.compile(r"/tasks/[^/]+$"))
    return finished(page)


def test_a_site_is_published_and_opened_by_its_name(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
    tmp_path: Path,
) -> None:
    folder = write_site(tmp_path / "site", "Hello from a published site")
    published = publish(user, web_net, folder, SITE)
    shot(user, "site-task")
    assert published["url"] == f"/site/{SITE}/", published
    # Listed on the sites page, with the wallet's names.
    user.goto(web_net.url("/sites"))
    expect(user.locator(f'a[href="/site/{SITE}/"]').first).to_be_visible()
    shot(user, "sites")
    # Opened by its name: the page, its style sheet and its script, served with their types.
    with user.expect_response(lambda r: r.url.endswith("/style.css")) as css:
        user.goto(web_net.url(f"/site/{SITE}/"))
    assert css.value.headers["content-type"].startswith("text/css")
    greeting = user.locator("#greeting")
    expect(greeting).to_have_text("Hello from a published site")
    expect(greeting).to_have_css("color", "rgb(0, 128, 0)")
    expect(user.locator("body")).to_have_attribute("data-ran", "yes")
    shot(user, "site")
    user.locator("#docs").click()
    expect(user.locator("#doc")).to_have_text("the docs page")
    # A folder without an index page: a listing; a text file served as text.
    user.goto(web_net.url(f"/site/{SITE}/assets/"))
    shot(user, "site-listing")
    with user.expect_navigation() as opened:
        user.get_by_role("link", name="notes.txt").click()
    answer = opened.value
    assert answer is not None and answer.headers["content-type"].startswith("text/plain")
    expect(user.locator("body")).to_have_text("a folder without an index page")
    # Published again under the same name: the name now gives the new content.
    write_site(folder, "Hello again")
    again = publish(user, web_net, folder, SITE)
    assert again["cid"] != published["cid"], again
    user.goto(web_net.url(f"/site/{SITE}/"))
    expect(user.locator("#greeting")).to_have_text("Hello again")
    user.goto(web_net.url(f"/cid/{published['cid']}/"))  # the old content, by its content id
    expect(user.locator("#greeting")).to_have_text("Hello from a published site")
    # The name is found from the explorer's search too.
    user.goto(web_net.url("/"))
    search(user, SITE)
    user.wait_for_url(web_net.url(f"/site/{SITE}/"))
    expect(user.locator("#greeting")).to_have_text("Hello again")
    # A name nobody holds: a clear error page.
    unknown = user.goto(web_net.url("/site/nobody-holds-this/"))
    assert unknown is not None and unknown.status == 404
    expect(user.locator("body")).to_contain_text("nobody-holds-this")
    shot(user, "site-unknown")


def search(page: Page, query: str) -> None:
    """Search from the header's box (on every page)."""
    box = page.locator('header input[name="q"]')
    box.fill(query)
    box.press("Enter")


def test_the_explorer_finds_blocks_transactions_and_accounts(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
) -> None:
    user.goto(web_net.url("/"))
    search(user, "1")
    user.wait_for_url(web_net.url("/block/1"))
    expect(user.locator("h1")).to_have_text("Block 1")
    shot(user, "block")
    search(user, wallet.funding)
    user.wait_for_url(web_net.url(f"/tx/{wallet.funding}"))
    expect(user.locator("main")).to_contain_text("success")
    expect(user.locator("main")).to_contain_text(f"{GIFT:,} Shor")
    search(user, wallet.address)
    user.wait_for_url(web_net.url(f"/account/{wallet.address}"))
    expect(user.locator("main")).to_contain_text(f"{web_net.balance(wallet.address):,} Shor")
    shot(user, "account")
    search(user, "no-such-thing-here")
    expect(user.locator("main")).to_contain_text("nothing matches")
    shot(user, "search-not-found")


def test_requests_without_the_session_token_are_refused(
    user: Page,
    web_net: WebNet,  # noqa: F811
    wallet: Wallet,
) -> None:
    """The wallet is unlocked in this session and holds coins: a forged transfer would move them,
    were it not refused."""
    user.goto(web_net.url("/wallet"))
    expect(user.locator('[data-test="wallet-address"]')).to_have_text(wallet.address)
    before, paid_before = web_net.balance(wallet.address), web_net.balance(RECIPIENT)
    forged = {"to": RECIPIENT, "amount": "1000"}
    # From the page's own context, without the token header: refused.
    status = user.evaluate(
        """async (body) => (await fetch("/api/wallet/send", {method: "POST",
            headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})).status""",
        forged,
    )
    assert status == 403
    # From another origin: a page on another port of 127.0.0.1, which is the same *site*, so
    # Chromium sends the UI's SameSite=Strict session cookie with its requests (checked by hand
    # with Chromium 156); only the token and the origin check stop them. A script's fetch and a
    # form posted there are both refused.
    attack = (
        "<!doctype html><form id=f method=post enctype=text/plain "
        f'action="{web_net.url("/api/wallet/send")}">'
        '<input name=\'{"to":"' + RECIPIENT + '","amount":"1000","x":"\' value=\'"}\'>'
        "</form>"
    )
    other = user.context.new_page()
    try:
        with other_origin(attack) as url:
            other.goto(url)
            with other.expect_response(lambda r: "/api/wallet/send" in r.url) as posted:
                other.evaluate(
                    """([target, body]) => fetch(target, {method: "POST", mode: "no-cors",
                        credentials: "include", body: JSON.stringify(body)})""",
                    [web_net.url("/api/wallet/send"), forged],
                )
            assert posted.value.status == 403
            with other.expect_response(lambda r: "/api/wallet/send" in r.url) as submitted:
                other.locator("#f").evaluate("(form) => form.submit()")
            assert submitted.value.status == 403
            # The session cookie went with it: SameSite=Strict does not keep it from another port
            # of the same host (docs/web.md, "Security").
            sent = submitted.value.request.all_headers()
            assert "qoin_session=" in sent.get("cookie", ""), sent
    finally:
        other.close()
    # Even a client holding the cookie and the token is refused from another origin.
    with httpx.Client(cookies=cookies_of(user)) as client:
        headers = {"X-Qoin-Session": session_token(user)}
        for origin in ("http://127.0.0.1:1", "http://evil.example"):
            answer = client.post(
                web_net.url("/api/wallet/send"), json=forged, headers={**headers, "Origin": origin}
            )
            assert answer.status_code == 403, answer.text
        # ... and without the token, from the right origin.
        answer = client.post(
            web_net.url("/api/wallet/send"), json=forged, headers={"Origin": web_net.base}
        )
        assert answer.status_code == 403, answer.text
        # (With both, from the UI's own origin, the same client is served: a harmless action.)
        answer = client.post(
            web_net.url("/api/wallet/fee"), json={}, headers={**headers, "Origin": web_net.base}
        )
        assert answer.status_code == 200, answer.text
    assert web_net.balance(wallet.address) == before
    assert web_net.balance(RECIPIENT) == paid_before


def test_mining_is_stopped_and_started_from_the_page(user: Page, web_net: WebNet) -> None:  # noqa: F811
    """Last in the module: the network stops mining for a moment."""
    user.goto(web_net.url("/mining"))
    state = user.locator("#mining-state")
    expect(state).to_have_text("mining")
    assert int(user.locator("#mining-blocks").inner_text()) > 0
    shot(user, "mining")
    user.get_by_role("button", name="Stop mining").click()
    expect(state).to_have_text("stopped")
    wait_until(
        lambda: not web_net.node.status()["mining"]["active"], 10, 0.2, "the node stopped mining"
    )
    shot(user, "mining-stopped")
    user.get_by_role("button", name="Start mining").click()
    expect(state).to_have_text("mining")
    height = web_net.node.height()
    wait_until(lambda: web_net.node.height() > height, 30, 0.2, "a block mined again")
