"""Dapp sites (:mod:`qoin.sites`, ``qoin site``): packing a folder into one canonical archive,
looking paths up in it, and, against a real network (a mining node and two storage providers),
publishing a folder under a name, resolving it, serving it by name and by content id, updating it
by publishing again, and refusing content whose bytes a provider changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from qoin import sites
from qoin.cli.main import app
from qoin.encoding.codec import Writer
from qoin.sites import BadSite, SiteNotFound, SiteStore, SiteUnavailable
from tests.framework import Network, Node
from tests.keys import keypair_for
from tests.storageutil import (
    CLIENT,
    RunningProvider,
    fund,
    start_providers,
    storage_network,
    write_keystore,
)

RUNNER = CliRunner()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


SITE = {
    "index.html": b"<h1>hello</h1>",
    "css/site.css": b"body { color: red }",
    "js/app.js": b"console.log(1)",
    "docs/readme.md": b"# docs",
    "img/logo.svg": b"<svg/>",
    "data.bin": bytes(range(256)),
}


# -- the archive (no processes) --------------------------------------------------------------------


def test_a_folder_packs_to_one_archive_whatever_the_order(tmp_path: Path) -> None:
    one = write_tree(tmp_path / "one", SITE)
    two = write_tree(tmp_path / "two", dict(reversed(SITE.items())))
    (one / ".git").mkdir()
    (one / ".git" / "HEAD").write_bytes(b"ref")
    archive = sites.pack_folder(one)
    assert archive == sites.pack_folder(two) == sites.pack(SITE)
    site = sites.unpack(archive)
    assert dict(site.files) == SITE and site.size == len(archive)
    assert site.entries("") == [
        ("css", True, 0),
        ("docs", True, 0),
        ("img", True, 0),
        ("js", True, 0),
        ("data.bin", False, 256),
        ("index.html", False, len(SITE["index.html"])),
    ]


def test_links_inside_are_copied_links_outside_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "site", {"index.html": b"x", "sub/page.html": b"page"})
    os.symlink("sub/page.html", root / "alias.html")
    assert sites.folder_files(root)["alias.html"] == b"page"
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "leak")
    with pytest.raises(BadSite, match="outside"):
        sites.pack_folder(root)
    (root / "leak").unlink()
    os.symlink("sub", root / "folder-link")
    with pytest.raises(BadSite, match="link to a folder"):
        sites.pack_folder(root)
    (root / "folder-link").unlink()
    os.mkfifo(root / "pipe")
    with pytest.raises(BadSite, match="neither a file nor a folder"):
        sites.pack_folder(root)
    (root / "pipe").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadSite, match="holds no file"):
        sites.pack_folder(tmp_path / "empty")
    with pytest.raises(BadSite, match="not a folder"):
        sites.pack_folder(tmp_path / "secret")


@pytest.mark.parametrize(
    "path", ["/abs", "a/../b", "./a", "a//b", "a/", "back\\slash", "tab\tname", "e\u0301", ""]
)
def test_paths_that_are_not_normalised_are_refused(path: str) -> None:
    assert sites.path_problem(path) is not None
    with pytest.raises(BadSite):
        sites.pack({path: b"x"})


def raw_archive(entries: list[tuple[bytes, bytes]], trailing: bytes = b"") -> bytes:
    writer = Writer().raw(sites.MAGIC).varint(len(entries))
    for path, data in entries:
        writer.var_bytes(path, sites.MAX_PATH_SIZE).var_bytes(data, sites.MAX_SITE_SIZE)
    return writer.bytes() + trailing


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (b"PK\x03\x04 a zip", "no site archive"),
        (raw_archive([(b"b", b""), (b"a", b"")]), "increasing"),
        (raw_archive([(b"a", b""), (b"a", b"")]), "increasing"),
        (raw_archive([(b"a", b"")], b"\x00"), "trailing"),
        (raw_archive([(b"../etc/passwd", b"")]), "'..'"),
        (raw_archive([(b"a", b""), (b"a/b", b"")]), "both a file and the folder"),
        (raw_archive([(b"\xff", b"")]), "UTF-8"),
        (raw_archive([]), "at least one file"),
        (sites.MAGIC + b"\xff\xff\xff\xff\x0f", "elements exceed"),
    ],
)
def test_archives_that_are_not_canonical_are_refused(archive: bytes, reason: str) -> None:
    with pytest.raises(BadSite, match=reason):
        sites.unpack(archive)


def test_lookup_serves_files_indexes_listings_and_redirects() -> None:
    site = sites.unpack(sites.pack({**SITE, "docs/guide/intro.html": b"intro"}))
    found = sites.lookup(site, "")
    assert (found.kind, found.path, found.data) == ("file", "index.html", SITE["index.html"])
    assert found.content_type == "text/html; charset=utf-8"
    assert sites.lookup(site, "css/site.css").content_type == "text/css; charset=utf-8"
    assert sites.lookup(site, "js/app.js").content_type == "text/javascript; charset=utf-8"
    assert sites.lookup(site, "img/logo.svg").content_type == "image/svg+xml; charset=utf-8"
    assert sites.lookup(site, "data.bin").content_type == "application/octet-stream"
    assert sites.lookup(site, "docs") == sites.Found("redirect", "docs/")
    assert sites.lookup(site, "docs/guide") == sites.Found("redirect", "guide/")
    assert sites.lookup(site, "docs/") == sites.Found("listing", "docs")
    assert site.entries("docs") == [("guide", True, 0), ("readme.md", False, 6)]
    for missing in ("nothing", "index.html/", "../index.html", "docs/../index.html", "js/x/"):
        assert sites.lookup(site, missing).kind == "missing"


# -- against a network -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Node, list[Any]]]:
    """A mining node with the test storage market, two providers, and the client funded."""
    tmp_path = tmp_path_factory.mktemp("sites")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        storage_network(tmp_path, monkeypatch) as (net, node),
    ):
        keys = [keypair_for(index=70 + i) for i in range(2)]
        fund(node, *keys, CLIENT, OTHER)
        providers = start_providers(
            net, node, [(f"provider-{i}", key) for i, key in enumerate(keys)]
        )
        yield net, node, providers


OTHER = keypair_for(index=72)
"""An account that does not hold the tests' names."""


def site_cli(*args: str) -> Result:
    return RUNNER.invoke(app, ["site", *args], env={"QOIN_PASSWORD": None})


def publish(net: Network, node: Node, folder: Path, name: str, who: str = "client") -> Result:
    key, password = write_keystore(net.workdir / who, CLIENT if who == "client" else OTHER)
    return site_cli(
        "publish", str(folder), "--name", name, "--key", str(key), "--password-file",
        str(password), "--duration", "60", "--rpc", node.user.url, "--json",
    )  # fmt: skip


def published(net: Network, node: Node, folder: Path, name: str) -> dict[str, Any]:
    done = publish(net, node, folder, name)
    assert done.exit_code == 0, done.output
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.mark.slow
def test_publish_resolve_serve_and_update(
    market: tuple[Network, Node, list[RunningProvider]], tmp_path: Path
) -> None:
    """``qoin site publish`` stores the folder and registers the name; a node serves it by name
    and by content id from its providers (cached by content id); publishing a changed folder
    updates the name; publishing the same folder again stores nothing; another account cannot
    take the name; ``qoin site ls`` lists it."""
    net, node, _ = market
    folder = write_tree(tmp_path / "blog", SITE)
    first = published(net, node, folder, "blog")
    assert first["name_action"] == "registered" and first["stored"] and first["files"] == 6
    assert first["storage"]["encrypted"] is False and first["storage"]["failedUploads"] == []
    assert first["expiry"] > 60 * 40 // 2
    cid = bytes.fromhex(first["cid"])
    assert sites.resolve(node.user.url, "blog").value == cid

    cache = tmp_path / "cache"
    store = SiteStore(node.user.url, cache)
    assert store.resolve("blog") == cid
    assert dict(store.site(cid).files) == SITE
    assert (cache / f"{cid.hex()}.site").read_bytes() == sites.pack(SITE)
    assert dict(SiteStore(node.user.url, cache, stall_s=0.1).site(cid).files) == SITE  # cached

    (folder / "index.html").write_bytes(b"<h1>hello again</h1>")
    second = published(net, node, folder, "blog")
    assert second["name_action"] == "updated" and second["stored"]
    assert second["previous"] == first["cid"] and second["expiry"] == first["expiry"]
    new = bytes.fromhex(second["cid"])
    assert new != cid and store.resolve("blog") == new
    assert store.site(new).files["index.html"] == b"<h1>hello again</h1>"
    assert store.site(cid).files["index.html"] == SITE["index.html"]  # the old content stays

    again = published(net, node, folder, "blog")
    assert (again["name_action"], again["stored"], again["deal"]) == (
        "unchanged",
        False,
        second["deal"],
    )

    taken = publish(net, node, folder, "blog", who="other")
    assert taken.exit_code == 1 and "is held by" in taken.stderr, taken.output
    bad = publish(net, node, folder, "Blog!")
    assert bad.exit_code == 2 and "a-z" in bad.stderr

    key, _ = write_keystore(net.workdir / "client", CLIENT)
    mine = site_cli("ls", "--key", str(key), "--rpc", node.user.url, "--json")
    assert mine.exit_code == 0, mine.output
    listed = json.loads(mine.stdout)["sites"]
    assert [(s["name"], s["cid"], s["deal"]) for s in listed] == [
        ("blog", second["cid"], second["deal"])
    ]
    everyone = site_cli("ls", "--rpc", node.user.url)
    assert everyone.exit_code == 0 and f"blog: {second['cid']}" in everyone.stdout

    with pytest.raises(SiteNotFound, match="not registered"):
        store.resolve("nobody-here")
    with pytest.raises(SiteNotFound, match="no open deal"):
        store.site(bytes(32))


@pytest.mark.slow
def test_bytes_a_provider_changed_are_refused(
    market: tuple[Network, Node, list[RunningProvider]], tmp_path: Path
) -> None:
    """A site whose shard one provider changed is still served whole from the other (every chunk
    is verified); once both providers' shards are changed it is refused, never served wrong."""
    net, node, providers = market
    files = {"index.html": b"<p>tamper</p>" * 2000, "big.bin": os.urandom(50_000)}
    done = published(net, node, write_tree(tmp_path / "t", files), "tampered")
    cid, deal = bytes.fromhex(done["cid"]), done["deal"]
    holders = {entry["provider"]: shard for shard, entry in enumerate(done["storage"]["providers"])}

    def corrupt(provider: RunningProvider) -> None:
        path = provider.shard_file(deal, holders[provider.address])
        with path.open("r+b") as handle:
            handle.seek(30_000)
            byte = handle.read(1)
            handle.seek(30_000)
            handle.write(bytes([byte[0] ^ 0xFF]))

    corrupt(providers[0])
    assert dict(SiteStore(node.user.url, None).site(cid).files) == files
    corrupt(providers[1])
    with pytest.raises(SiteUnavailable, match=r"cannot fetch .* whole from its providers") as why:
        SiteStore(node.user.url, None, stall_s=5).site(cid)
    assert str(why.value).count("is wrong") == 2  # both providers' chunks failed verification
