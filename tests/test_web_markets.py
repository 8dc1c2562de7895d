"""The web UI's market pages against real processes: a mining node with the storage and compute
markets' test parameters, two storage providers and a compute provider (``qoin.web`` in this
process, driven with Starlette's TestClient as the browser would: the session token in its header,
this origin).

Storage: a file streamed to the upload endpoint is stored under the session's unlocked key (its
progress bars and result followed over the task API), listed with its shards, downloaded back
(decrypted) and cancelled. Sites: an archive posted to the publish endpoint is stored and named;
``/site/NAME/...`` and ``/cid/CID/...`` serve its files with their content types, an index, a
listing, a redirect and error pages, sandboxed. Compute: a job submitted from the form runs on the
provider; its live output, settlement and result files come back over the task API. AI: a zip of
an image folder uploaded to the prepare endpoint becomes a dataset, stored and offered to the
training form; a zip whose paths leave its folder is refused. Requests without the session token
are refused.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from qoin import sites
from qoin.crypto import keystore
from qoin.web.app import create_app
from qoin.web.ui import SESSION_HEADER, WebConfig
from tests.computeutil import compute_network, start_compute_provider
from tests.framework import wait_until
from tests.keys import keypair_for
from tests.storageutil import CLIENT, PASSWORD, fund, start_providers

ORIGIN = "http://127.0.0.1:8681"
STORAGE = [keypair_for(index=180 + i) for i in range(2)]
COMPUTE = keypair_for(index=182)
TASK_S = 120.0
SITE = {
    "index.html": b"<h1>a dapp</h1>",
    "css/site.css": b"h1 { color: teal }",
    "docs/readme.md": b"# readme",
}


class Browser:
    """A TestClient with the session token, as the UI's pages send requests."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        page = client.get("/wallet")
        found = re.search(r'<meta name="qoin-session" content="([^"]+)">', page.text)
        assert found is not None, page.text
        self.token = found[1]
        self.headers = {SESSION_HEADER: self.token, "origin": ORIGIN}

    def post(self, path: str, body: object) -> Any:
        return self.client.post(path, json=body, headers=self.headers)

    def send(self, path: str, data: bytes) -> Any:
        headers = {**self.headers, "content-type": "application/octet-stream"}
        return self.client.post(path, content=data, headers=headers)

    def task(self, task_id: str) -> dict[str, Any]:
        """Wait for the task to end; its last state (it must have succeeded)."""

        def ended() -> dict[str, Any] | None:
            state: dict[str, Any] = self.post(f"/api/tasks/{task_id}", {}).json()
            return state if state["state"] != "running" else None

        state = wait_until(ended, TASK_S, 0.3, f"task {task_id}")
        assert state is not None and state["state"] == "done", state
        return state


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """The network, the UI in front of it, and a session with the client's wallet unlocked."""
    workdir = tmp_path_factory.mktemp("web-markets")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        compute_network(workdir, monkeypatch) as (net, node),
    ):
        fund(node, *STORAGE, COMPUTE, CLIENT)
        start_providers(net, node, [(f"storage-{i}", key) for i, key in enumerate(STORAGE)])
        start_compute_provider(net, node.user.url, COMPUTE, name="compute")
        keys = workdir / "keystore"
        keys.mkdir()
        stored = keystore.encrypt_keypair(CLIENT, PASSWORD, log_n=14)
        keystore.save(stored, keys / f"{CLIENT.address}.json")
        config = WebConfig(
            rpc=node.user.url, consensus_rpc=None, keystore_dir=keys, datadir=workdir / "web"
        )
        with TestClient(create_app(config), base_url=ORIGIN) as client:
            made = Browser(client)
            unlocked = made.post(
                "/api/wallet/unlock", {"address": str(CLIENT.address), "password": PASSWORD}
            )
            assert unlocked.status_code == 200, unlocked.text
            yield made


@pytest.mark.slow
def test_upload_list_download_cancel(browser: Browser) -> None:
    data = bytes(range(256)) * 300
    refused = browser.client.post("/api/storage/upload?name=x", content=data)
    assert refused.status_code == 403
    sent = browser.send("/api/storage/upload?name=hello.bin&duration=60", data)
    assert sent.status_code == 200, sent.text
    state = browser.task(sent.json()["task"])
    result = state["result"]
    assert result["encrypted"] and result["size"] == len(data) and result["failedUploads"] == []
    assert any(bar["description"].startswith("shard 0") for bar in state["bars"])
    assert all(bar["finished"] and bar["done"] == bar["total"] for bar in state["bars"])
    cid = result["cid"]
    assert f"/storage/{cid}" in browser.client.get("/storage").text
    shards = browser.client.get(f"/storage/{cid}")
    assert shards.status_code == 200 and "Shards" in shards.text
    assert all(p["provider"] in shards.text for p in result["providers"])
    got = browser.post("/api/storage/download", {"cid": cid})
    assert got.status_code == 200 and got.content == data
    cancelled = browser.post("/api/storage/cancel", {"cid": cid})
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == "deal"


@pytest.mark.slow
def test_publish_and_serve_a_site(browser: Browser) -> None:
    bad = browser.send("/api/sites/publish?name=webdemo", b"not an archive")
    assert bad.status_code == 400 and "no site archive" in bad.json()["error"]
    sent = browser.send("/api/sites/publish?name=webdemo&duration=60", sites.pack(SITE))
    assert sent.status_code == 200, sent.text
    result = browser.task(sent.json()["task"])["result"]
    assert result["name_action"] == "registered" and result["url"] == "/site/webdemo/"
    client = browser.client

    index = client.get("/site/webdemo/")
    assert index.status_code == 200 and index.content == SITE["index.html"]
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert "sandbox" in index.headers["content-security-policy"]
    css = client.get("/site/webdemo/css/site.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.content == SITE["css/site.css"]
    assert client.get("/site/webdemo", follow_redirects=False).headers["location"] == (
        "/site/webdemo/"
    )
    assert client.get("/site/webdemo/docs", follow_redirects=False).headers["location"] == "docs/"
    listing = client.get("/site/webdemo/docs/")
    assert listing.status_code == 200 and 'href="readme.md"' in listing.text
    assert "qoin-session" not in listing.text
    by_cid = client.get(f"/cid/{result['cid']}/docs/readme.md")
    assert by_cid.status_code == 200 and by_cid.content == SITE["docs/readme.md"]

    missing = client.get("/site/webdemo/nothing.html")
    assert missing.status_code == 404 and "is not in site webdemo" in missing.text
    unknown = client.get("/site/nobody-here/")
    assert unknown.status_code == 404 and "not registered" in unknown.text
    assert client.get("/cid/xyz/").status_code == 400
    assert client.get(f"/cid/{'ab' * 32}/").status_code == 404
    page = client.get("/sites")
    assert 'href="/site/webdemo/"' in page.text


@pytest.mark.slow
def test_a_compute_job_from_the_form(browser: Browser) -> None:
    refused = browser.client.post("/api/compute/run", json={"command": "true"})
    assert refused.status_code == 403
    bad = browser.post("/api/compute/run", {"command": "true", "memory": "lots"})
    assert bad.status_code == 400 and "--memory" in bad.json()["error"]
    command = "sh -c 'echo hello from the job; echo result > /outputs/answer.txt'"
    sent = browser.post(
        "/api/compute/run", {"command": command, "memory": "256MiB", "timeout": "20"}
    )
    assert sent.status_code == 200, sent.text
    state = browser.task(sent.json()["task"])
    assert "hello from the job" in state["output"]
    assert state["result"]["exitCode"] == 0, state["result"]
    assert {p["phase"] for p in state["phases"]} >= {"match", "settle"}
    name = next(f for f in state["files"] if f.endswith("answer.txt"))
    got = browser.post(f"/api/tasks/{state['id']}/file", {"name": name})
    assert got.status_code == 200 and got.content == b"result\n"


@pytest.mark.slow
def test_a_training_run_is_checked_before_the_market(browser: Browser) -> None:
    """The training form's options are checked (HTTP 400), and a dataset that is nowhere fails
    the task with the reason, before anything is bid."""
    bad = browser.post("/api/compute/train", {"model": "gpt", "data": "ab" * 32})
    assert bad.status_code == 400 and "--model is one of" in bad.json()["error"]
    sent = browser.post("/api/compute/train", {"model": "mlp", "data": "ab" * 32, "epochs": "2"})
    assert sent.status_code == 200, sent.text
    task_id = sent.json()["task"]

    def ended() -> dict[str, Any] | None:
        state: dict[str, Any] = browser.post(f"/api/tasks/{task_id}", {}).json()
        return state if state["state"] != "running" else None

    state = wait_until(ended, TASK_S, 0.3, "the training task")
    assert state is not None and state["state"] == "failed"
    assert "is not a dataset in the catalog" in state["error"], state["error"]
    assert browser.client.get(f"/tasks/{task_id}").status_code == 200


def image_zip(*extra: str) -> bytes:
    """A zip of one folder of two classes of small PNG images (plus ``extra`` paths)."""
    from PIL import Image  # noqa: PLC0415 (the ai extra)

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for label, shade in (("dark", 20), ("light", 230)):
            for i in range(6):
                image = io.BytesIO()
                Image.new("L", (6, 6), shade + i).save(image, "PNG")
                archive.writestr(f"shapes/{label}/{i}.png", image.getvalue())
        for name in extra:
            archive.writestr(name, b"x")
    return out.getvalue()


@pytest.mark.slow
def test_a_dataset_is_prepared_from_an_uploaded_zip(browser: Browser) -> None:
    """The prepare form's endpoint: an uploaded zip of an image folder becomes a dataset stored
    encrypted and recorded in the catalog, which the training form then offers."""
    refused = browser.client.post("/api/compute/prepare?source=file", content=image_zip())
    assert refused.status_code == 403
    query = "/api/compute/prepare?source=file&filename=shapes.zip&test=0.25&duration=60"
    evil = browser.send(query, image_zip("../../escaped.png"))
    assert evil.status_code == 200, evil.text

    def ended(task_id: str) -> dict[str, Any]:
        state: dict[str, Any] = wait_until(
            lambda: (
                (s := browser.post(f"/api/tasks/{task_id}", {}).json())["state"] != "running" and s
            ),
            TASK_S,
            0.3,
            f"task {task_id}",
        )
        return state

    failed = ended(evil.json()["task"])
    assert failed["state"] == "failed" and "leaves its folder" in failed["error"], failed
    sent = browser.send(query, image_zip("shapes/.DS_Store", "__MACOSX/shapes/._0.png"))
    assert sent.status_code == 200, sent.text
    state = ended(sent.json()["task"])
    assert state["state"] == "done", state
    result = state["result"]
    assert result["name"] == "shapes" and result["samples"] == 12 and result["test"] == 3, result
    assert (
        result["classes"] == ["dark", "light"]
        and result["train"] == f"/compute?data={result['cid']}"
    )
    page = browser.client.get(result["train"]).text
    assert f'<option value="{result["cid"]}" selected>' in page
