"""Dapp sites: a folder packed into one archive, stored through the storage market, named in the
``names`` actor, and served by every node's web UI at ``/site/NAME/...`` and ``/cid/CID/...``.

The archive (:func:`pack`, :func:`unpack`)
    ``MAGIC || count varint || count x (path var_bytes || data var_bytes)`` with the
    :mod:`qoin.encoding.codec` primitives, files sorted by their paths' UTF-8 bytes, each path
    once. A path is relative and normalised: ``/``-separated components of 1 to
    :data:`MAX_COMPONENT_SIZE` bytes of UTF-8 (NFC), none ``.`` or ``..``, no ``\\``, no control
    character; no file is also the folder of another. Decoding is canonical (every rule checked,
    no trailing bytes), so one set of files has exactly one archive and one content id: packing
    the same folder twice stores nothing new. At most :data:`MAX_SITE_FILES` files and
    :data:`MAX_SITE_SIZE` bytes of archive, checked before anything is read or allocated.

Packing a folder (:func:`pack_folder`)
    Every regular file under it, depth first, ``.git`` folders left out. A symbolic link to a file
    inside the folder is packed as a copy of that file; a link that leads outside the folder, a
    link to a folder, and anything that is not a file or a folder (a socket, a device) are refused
    with their path.

Publishing (:func:`publish`)
    The archive is stored in clear (a site is public) with :func:`qoin.storage.client.put`, unless
    an open deal stores its content id already; then NAME is registered to the content id if it is
    free (a term that covers the deal, :func:`name_term`), or set to it with ``set_value`` if the
    publishing account holds it. A name another account holds is refused before anything is
    stored. The previous content's deal is left to run (``qoin storage cancel`` ends it).

Serving (:class:`SiteStore`, :func:`lookup`)
    A name resolves through the ``names`` actor; a content id is located with
    :func:`qoin.storage.retrieve.locate` and fetched with :func:`qoin.storage.retrieve.download`,
    which verifies every chunk of every shard against the content id (a provider that sends one
    wrong byte is dropped). The verified archive is cached by content id under the node's data
    directory (``sites/``) and, a few at a time, in memory. :func:`lookup` maps a path to a file
    (with its content type), a redirect (a folder asked without its ``/``), an index (the folder's
    ``index.html``, else a listing) or nothing.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import stat
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import MAX_TERM, MIN_TERM, name_problem, term_fee
from qoin.crypto.address import Address
from qoin.encoding.codec import DecodeError, Reader, Writer
from qoin.errors import QoinError
from qoin.execution.abi import decode_value
from qoin.files import FileReadError, read_bounded, write_atomically
from qoin.rpc.actorview import ActorEvents, MarketError
from qoin.rpc.client import RpcCallError, RpcClient
from qoin.rpc.follow import logs_between
from qoin.storage import client as storage
from qoin.storage import retrieve
from qoin.storage.client import PutOptions, StorageClientError
from qoin.storage.market import MarketView
from qoin.wallet import CallReverted, Wallet, WalletError, query

MAGIC: Final = b"qoin-site/1\n"
"""The first bytes of every site archive."""
MAX_SITE_SIZE: Final = 64 * 1024 * 1024
"""The largest archive packed, published or served (64 MiB)."""
MAX_SITE_FILES: Final = 10_000
"""The most files a site holds."""
MAX_PATH_SIZE: Final = 1024
"""The longest path in a site, in bytes of UTF-8."""
MAX_COMPONENT_SIZE: Final = 255
"""The longest component of a path, in bytes."""
MAX_DEPTH: Final = 32
"""The deepest folder packed."""
SKIPPED_FOLDERS: Final = frozenset({".git"})
"""Folders :func:`pack_folder` leaves out."""
INDEX: Final = "index.html"
"""The file a folder's URL serves when it has one."""
CACHE_FOLDER: Final = "sites"
"""Where a node caches verified archives, under its data directory."""
MEMORY_CACHE_BYTES: Final = 128 * 1024 * 1024
"""Bytes of archives a :class:`SiteStore` keeps in memory (the most recently used)."""
MAX_LISTED: Final = 500
"""The most names :func:`list_sites` resolves."""
MAX_LOG_QUERIES: Final = 1_000
"""Log queries of :data:`MAX_LOG_RANGE` blocks :func:`list_sites` makes at most."""
RECEIPT_TIMEOUT_S: Final = 120.0
"""Seconds to wait for a name transaction's receipt."""

NAME_EVENTS: Final = ActorEvents(
    NAMES_ADDRESS,
    ("NameRegistered", "NameRenewed", "NameTransferred", "NameValueChanged", "NameExpired"),
    "names actor",
)
"""The ``names`` actor's events (:mod:`qoin.actors.names`)."""


class SiteError(QoinError):
    """A site that cannot be packed, published or served; the message says why and what to do."""


class BadSite(SiteError):
    """Input no site can be made of: a folder with a link outside it, a bad name, a malformed
    archive. The input, not the network, must change."""


class SiteNotFound(SiteError):
    """A name that is not registered (or expired), or a content id no deal stores."""


class SiteUnavailable(SiteError):
    """Content that cannot be fetched whole and verified from its providers, or that is no
    site."""


class NameTaken(SiteError):
    """The name is held by another account."""


# -- paths -----------------------------------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a normalised site path, or None if it is."""
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        return "it is not UTF-8"
    if not 0 < len(raw) <= MAX_PATH_SIZE:
        return f"a path is 1 to {MAX_PATH_SIZE} bytes, got {len(raw)}"
    parts = path.split("/")
    checks = (
        (unicodedata.normalize("NFC", path) == path, "it is not in Unicode normal form C"),
        (
            not any(ord(char) < 0x20 or ord(char) == 0x7F for char in path) and "\\" not in path,
            "it holds a control character or a backslash",
        ),
        (
            not any(part in ("", ".", "..") for part in parts),
            "it has an empty, '.' or '..' component (or starts or ends with '/')",
        ),
        (
            all(len(part.encode()) <= MAX_COMPONENT_SIZE for part in parts),
            f"a component is at most {MAX_COMPONENT_SIZE} bytes",
        ),
    )
    return next((reason for ok, reason in checks if not ok), None)


def _parents(path: str) -> Iterator[str]:
    """``a/b/c`` -> ``a``, ``a/b``."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


# -- the archive -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A site's files, by path (the archive unpacked)."""

    files: Mapping[str, bytes] = field(repr=False)
    """path -> content."""
    size: int
    """Bytes of the archive."""
    folders: frozenset[str] = field(repr=False)
    """Every folder that holds a file (``""`` is the root)."""

    @classmethod
    def of(cls, files: Mapping[str, bytes], size: int) -> Site:
        """The site of ``files`` (checked by :func:`unpack` or :func:`pack`)."""
        folders = {""}
        for path in files:
            folders.update(_parents(path))
        return cls(dict(files), size, frozenset(folders))

    def entries(self, folder: str) -> list[tuple[str, bool, int]]:
        """(name, is a folder, bytes) of what ``folder`` (``""``: the root) holds directly,
        folders first, then by name."""
        prefix = f"{folder}/" if folder else ""
        found: dict[str, tuple[bool, int]] = {}
        for path, data in self.files.items():
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                name, slash, _ = rest.partition("/")
                if slash:
                    found.setdefault(name, (True, 0))
                else:
                    found[name] = (False, len(data))
        return sorted(((n, d, s) for n, (d, s) in found.items()), key=lambda e: (not e[1], e[0]))


def _checked_files(files: Mapping[str, bytes]) -> list[tuple[bytes, str]]:
    """The files' paths, checked, sorted by their bytes."""
    if not files:
        raise BadSite("a site holds at least one file")
    if len(files) > MAX_SITE_FILES:
        raise BadSite(f"a site holds at most {MAX_SITE_FILES} files, got {len(files)}")
    for path in files:
        problem = path_problem(path)
        if problem is not None:
            raise BadSite(f"path {path[:200]!r}: {problem}")
        for parent in _parents(path):
            if parent in files:
                raise BadSite(f"{parent!r} is both a file and the folder of {path[:200]!r}")
    return sorted((path.encode(), path) for path in files)


def pack(files: Mapping[str, bytes]) -> bytes:
    """The archive of ``files`` (path -> content); :class:`BadSite` if a path is not normalised
    or the archive would be over :data:`MAX_SITE_SIZE` bytes."""
    writer = Writer().raw(MAGIC).varint(len(files))
    total = len(MAGIC)
    for _, path in _checked_files(files):
        data = files[path]
        total += len(path.encode()) + len(data) + 20
        if total > MAX_SITE_SIZE:
            raise BadSite(f"the site's archive would be over {MAX_SITE_SIZE} bytes")
        writer.var_bytes(path.encode(), MAX_PATH_SIZE).var_bytes(data, MAX_SITE_SIZE)
    archive = writer.bytes()
    if len(archive) > MAX_SITE_SIZE:
        raise BadSite(f"the site's archive is {len(archive)} bytes, over {MAX_SITE_SIZE}")
    return archive


def unpack(archive: bytes) -> Site:
    """The site of an archive; :class:`BadSite` unless it is the canonical archive of its
    files."""
    if len(archive) > MAX_SITE_SIZE:
        raise BadSite(f"an archive is at most {MAX_SITE_SIZE} bytes, got {len(archive)}")
    if not archive.startswith(MAGIC):
        raise BadSite("it is no site archive (it does not start with the site magic)")
    reader = Reader(archive)
    files: dict[str, bytes] = {}
    last = b""
    try:
        reader.fixed(len(MAGIC))
        count = reader.count(MAX_SITE_FILES)
        for _ in range(count):
            raw = reader.var_bytes(MAX_PATH_SIZE)
            if files and raw <= last:
                raise BadSite("its paths are not in strictly increasing order")
            last = raw
            try:
                path = raw.decode()
            except UnicodeDecodeError:
                raise BadSite("a path is not UTF-8") from None
            files[path] = reader.var_bytes(MAX_SITE_SIZE)
        reader.finish()
    except DecodeError as exc:
        raise BadSite(f"the archive does not decode: {exc}") from None
    _checked_files(files)
    return Site.of(files, len(archive))


def _folder_path(root: Path, relative: tuple[str, ...]) -> str:
    """The normalised site path of ``root/relative``; :class:`BadSite` if it cannot be one."""
    try:
        joined = "/".join(relative)
        joined.encode()
    except UnicodeEncodeError:
        raise BadSite(f"{root.joinpath(*relative)}: the name is not UTF-8") from None
    path = unicodedata.normalize("NFC", joined)
    problem = path_problem(path)
    if problem is not None:
        raise BadSite(f"{root.joinpath(*relative)}: {problem}")
    return path


def _collect(
    root: Path, real_root: Path, folder: Path, relative: tuple[str, ...], out: dict[str, Path]
) -> None:
    if len(relative) > MAX_DEPTH:
        raise BadSite(f"{folder}: folders nest more than {MAX_DEPTH} deep")
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise BadSite(f"cannot list {folder}: {exc.strerror}") from None
    for entry in entries:
        here = (*relative, entry.name)
        shown = Path(entry.path)
        if entry.is_symlink():
            target = shown.resolve()
            if not target.is_relative_to(real_root):
                raise BadSite(f"{shown} is a link to {target}, outside {root}: copy the file in")
            if not target.is_file():
                raise BadSite(f"{shown} is a link to a folder (or to nothing): not followed")
            source = target
        elif entry.is_dir(follow_symlinks=False):
            if entry.name not in SKIPPED_FOLDERS:
                _collect(root, real_root, shown, here, out)
            continue
        elif entry.is_file(follow_symlinks=False):
            source = shown
        else:
            raise BadSite(f"{shown} is neither a file nor a folder")
        path = _folder_path(root, here)
        if path in out:
            raise BadSite(f"{shown}: two files have the path {path!r} once normalised")
        out[path] = source
        if len(out) > MAX_SITE_FILES:
            raise BadSite(f"{root} holds more than {MAX_SITE_FILES} files")


def folder_files(root: Path) -> dict[str, bytes]:
    """The files of the folder ``root`` by site path (see the module docstring); :class:`BadSite`
    if it cannot be a site (a link outside it, too many files or bytes, an unreadable file)."""
    if not root.is_dir():
        raise BadSite(f"{root} is not a folder")
    sources: dict[str, Path] = {}
    _collect(root, root.resolve(), root, (), sources)
    if not sources:
        raise BadSite(f"{root} holds no file")
    files: dict[str, bytes] = {}
    budget = MAX_SITE_SIZE - len(MAGIC)
    for path, source in sources.items():
        try:
            size = source.stat().st_size
            if not stat.S_ISREG(source.stat().st_mode):
                raise BadSite(f"{source} is not a regular file")
        except OSError as exc:
            raise BadSite(f"cannot read {source}: {exc.strerror}") from None
        if size > budget:
            raise BadSite(f"{root} holds more than the {MAX_SITE_SIZE} bytes a site may hold")
        try:
            files[path] = read_bounded(source, budget, "site file")
        except FileReadError as exc:
            raise BadSite(str(exc)) from None
        budget -= len(files[path]) + len(path.encode()) + 20
    return files


def pack_folder(root: Path) -> bytes:
    """The archive of the folder ``root`` (:func:`folder_files`, :func:`pack`)."""
    return pack(folder_files(root))


# -- content types and lookups ---------------------------------------------------------------------

_TYPES = mimetypes.MimeTypes()  # Python's own table, not the system's: the same on every node
for _type, _ext in (
    ("text/javascript", ".js"),
    ("text/javascript", ".mjs"),
    ("application/wasm", ".wasm"),
    ("application/json", ".json"),
    ("application/manifest+json", ".webmanifest"),
    ("image/svg+xml", ".svg"),
    ("text/markdown", ".md"),
    ("font/woff2", ".woff2"),
):
    _TYPES.add_type(_type, _ext)
TEXT_TYPES: Final = frozenset(
    {"application/json", "application/manifest+json", "image/svg+xml", "application/xml"}
)


def content_type(path: str) -> str:
    """The content type a site's file is served with (UTF-8 for text)."""
    found, _ = _TYPES.guess_type(path, strict=False)
    kind = found or "application/octet-stream"
    if kind.startswith("text/") or kind in TEXT_TYPES:
        return f"{kind}; charset=utf-8"
    return kind


@dataclass(frozen=True)
class Found:
    """What a path of a site leads to."""

    kind: str
    """``file``, ``redirect`` (a folder asked without its ``/``), ``listing`` (a folder with no
    index.html) or ``missing``."""
    path: str
    """The file's site path (``file``), the folder's (``listing``, ``""``: the root), or where to
    redirect to, relative to the path asked (``redirect``)."""
    data: bytes = field(default=b"", repr=False)
    """The file's content."""
    content_type: str = ""
    """The file's content type."""


def lookup(site: Site, path: str) -> Found:
    """What ``path`` (the URL's path after the site's root, decoded) leads to in ``site``."""
    wanted = path.lstrip("/")
    folder = wanted.endswith("/") or wanted == ""
    clean = wanted.rstrip("/")
    if clean and path_problem(clean) is not None:
        return Found("missing", clean)
    if not folder and clean in site.files:
        return Found("file", clean, site.files[clean], content_type(clean))
    if clean not in site.folders:
        return Found("missing", clean)
    if not folder:
        return Found("redirect", clean.rsplit("/", 1)[-1] + "/")
    index = f"{clean}/{INDEX}" if clean else INDEX
    if index in site.files:
        return Found("file", index, site.files[index], content_type(index))
    return Found("listing", clean)


# -- names -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameEntry:
    """What a held name resolves to."""

    name: str
    """The name."""
    owner: Address
    """Who holds it."""
    value: bytes
    """What it resolves to (a site's content id)."""
    expiry: int
    """The height from which it is free."""


def checked_name(name: str) -> str:
    """``name`` if it is a valid name; :class:`BadSite` saying why not."""
    problem = name_problem(name)
    if problem is not None:
        raise BadSite(f"name {name[:80]!r}: {problem}")
    return name


def resolve(rpc: RpcClient | str, name: str) -> NameEntry:
    """What ``name`` resolves to now; :class:`SiteNotFound` if it is not registered or expired,
    :class:`SiteError` if the node cannot be asked."""
    checked_name(name)
    try:
        raw = query(rpc, NAMES_ADDRESS, "resolve", (name,))
    except CallReverted as exc:
        raise SiteNotFound(exc.reason) from None
    except WalletError as exc:
        raise SiteError(f"cannot ask the node for the name {name!r}: {exc}") from None
    try:
        record = decode_value(raw)
    except DecodeError:
        record = None
    if not isinstance(record, tuple) or len(record) != 3:
        raise SiteError(f"the names actor answered {raw.hex()[:80]}, not a record")
    owner, value, expiry = record
    if not (isinstance(owner, Address) and isinstance(value, bytes) and isinstance(expiry, int)):
        raise SiteError("the names actor answered a record of the wrong shape")
    return NameEntry(name, owner, value, expiry)


def _held(rpc: RpcClient | str, name: str) -> NameEntry | None:
    try:
        return resolve(rpc, name)
    except SiteNotFound:
        return None


def registered_names(client: RpcClient, height: int) -> list[str]:
    """Every name ever registered (from the actor's ``NameRegistered`` events up to ``height``),
    first registration first; at most :data:`MAX_LOG_QUERIES` queries of the latest blocks."""
    log_filter = {
        "address": str(NAMES_ADDRESS),
        "topics": [[NAME_EVENTS.topic("NameRegistered").hex()]],
    }
    names: dict[str, None] = {}
    try:
        for log in logs_between(client, log_filter, 0, height, MAX_LOG_QUERIES):
            if log.get("removed"):
                continue
            try:
                decoded = NAME_EVENTS.decode(log)
            except MarketError:
                continue
            if decoded is None or not isinstance(decoded[1], tuple) or not decoded[1]:
                continue
            name = decoded[1][0]
            if isinstance(name, str):
                names[name] = None
    except RpcCallError as exc:
        raise SiteError(f"cannot read the names actor's events: {exc}") from None
    return list(names)


@dataclass(frozen=True)
class SiteEntry:
    """A name and the content it resolves to."""

    record: NameEntry
    """The name's record."""
    deal: int | None
    """The open deal storing its content, or None."""

    def to_json(self) -> dict[str, Any]:
        """The entry in JSON (``qoin site ls --json``)."""
        return {
            "name": self.record.name,
            "cid": self.record.value.hex(),
            "owner": str(self.record.owner),
            "expiry": self.record.expiry,
            "deal": self.deal,
        }


def list_sites(view: MarketView, owner: Address | None = None) -> tuple[int, list[SiteEntry]]:
    """(head height, entries): the names ``owner`` holds (each with the open deal of its content,
    if any), or with no owner every name whose content an open deal stores; at most
    :data:`MAX_LISTED` names are resolved (the first registered)."""
    height = _head(view.client)
    entries = []
    for name in registered_names(view.client, height)[:MAX_LISTED]:
        record = _held(view.client, name)
        if record is None or (owner is not None and record.owner != owner):
            continue
        try:
            deal = view.deal_of(record.value)
        except (WalletError, MarketError) as exc:
            raise SiteError(f"cannot ask the storage market about {name}: {exc}") from None
        if owner is None and deal is None:
            continue
        entries.append(SiteEntry(record, deal))
    return height, entries


# -- publishing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishOptions:
    """How :func:`publish` stores a site and names it."""

    n: int = storage.DEFAULT_SHARDS
    """Shards (distinct providers)."""
    k: int = storage.DEFAULT_NEEDED
    """Shards that rebuild the archive."""
    duration: int = storage.DEFAULT_DURATION
    """Periods the deal lasts."""
    max_price: int | None = None
    """Shor per GiB per period at most (None: the asks chosen)."""
    name_blocks: int | None = None
    """The name's term when it is registered (None: :func:`name_term`)."""


@dataclass(frozen=True)
class Published:
    """A published site."""

    name: str
    """The name."""
    cid: bytes
    """The archive's content id."""
    size: int
    """Bytes of the archive."""
    files: int
    """Files in it."""
    deal: int
    """The open deal storing it."""
    stored: bool
    """Whether this call stored it (False: an open deal stored it already)."""
    action: str
    """What became of the name: ``registered``, ``updated`` or ``unchanged``."""
    expiry: int
    """The height from which the name is free."""
    previous: bytes | None
    """What the name resolved to before (None: it was free)."""
    put: storage.PutResult | None = field(default=None, repr=False)
    """The storage result, when this call stored the archive."""

    def to_json(self) -> dict[str, Any]:
        """The result in JSON (``qoin site publish --json``)."""
        answer: dict[str, Any] = {
            "name": self.name,
            "cid": self.cid.hex(),
            "size": self.size,
            "files": self.files,
            "deal": self.deal,
            "stored": self.stored,
            "name_action": self.action,
            "expiry": self.expiry,
            "previous": None if self.previous is None else self.previous.hex(),
        }
        if self.put is not None:
            answer["storage"] = self.put.to_json()
        return answer


def name_term(view: MarketView, deal: int, height: int) -> int:
    """Blocks from ``height`` to the end of ``deal``'s last period, within the names actor's
    term bounds (a registered name lives as long as its content is stored)."""
    info = view.get_deal(deal)
    params = view.params()
    end = height if info is None else params.period_start(info.end)
    return min(max(end - height, MIN_TERM), MAX_TERM)


def _head(client: RpcClient) -> int:
    try:
        height = client.call("qoin_blockNumber")
    except RpcCallError as exc:
        raise SiteError(f"cannot ask the node for its head: {exc}") from None
    if not isinstance(height, int) or isinstance(height, bool) or height < 0:
        raise SiteError(f"qoin_blockNumber answered {height!r:.80}")
    return height


def _name_call(wallet: Wallet, method: str, args: tuple[Any, ...], value: int = 0) -> int | None:
    try:
        receipt = wallet.transact(
            NAMES_ADDRESS, method, args, value=value, timeout=RECEIPT_TIMEOUT_S
        )
    except CallReverted as exc:
        raise SiteError(f"the names actor refused {method}: {exc.reason}") from None
    except WalletError as exc:
        raise SiteError(f"{method} of the name failed: {exc}") from None
    try:
        returned = decode_value(bytes.fromhex(str(receipt.get("returnData") or "")))
    except (ValueError, DecodeError):
        return None
    return returned if isinstance(returned, int) and not isinstance(returned, bool) else None


def publish(
    wallet: Wallet,
    view: MarketView,
    archive: bytes,
    name: str,
    options: PublishOptions = PublishOptions(),
    progress: storage.Progress = storage.NO_PROGRESS,
) -> Published:
    """Store ``archive`` (a site, :func:`pack`) in clear unless an open deal stores it already,
    and point ``name`` at its content id (see the module docstring). :class:`NameTaken` before
    anything is stored if another account holds the name; :class:`BadSite` for a bad name or
    archive; :class:`~qoin.storage.client.StorageClientError` if it cannot be stored;
    :class:`SiteError` if the name transaction fails (the archive is then stored: publish again
    to retry the name)."""
    checked_name(name)
    site = unpack(archive)
    held = _held(wallet.client, name)
    if held is not None and held.owner != wallet.address:
        raise NameTaken(
            f"name {name!r} is held by {held.owner} until height {held.expiry}: choose another"
        )
    params = view.params()
    put_options = PutOptions(
        n=options.n,
        k=options.k,
        duration=options.duration,
        max_price=options.max_price,
        encrypt=False,
    )
    storage.check_options(put_options, params)
    cid = storage.prepare(archive, options.n, options.k, params.leaf_size, None).cid
    deal = view.deal_of(cid)
    result = None
    if deal is None:
        result = storage.put(wallet, view, archive, put_options, progress)
        if len(result.failed) > options.n - options.k:
            reasons = "; ".join(reason for _, reason in result.failed)
            raise SiteError(
                f"deal {result.deal} formed but only {options.n - len(result.failed)} of the "
                f"{options.k} shards needed were uploaded ({reasons}); the name was not changed: "
                f"cancel the deal (qoin storage cancel {result.cid.hex()}) and publish again"
            )
        deal = result.deal
    if held is None:
        blocks = options.name_blocks or name_term(view, deal, _head(wallet.client))
        expiry = _name_call(wallet, "register", (name, cid, blocks), term_fee(blocks))
        action = "registered"
    elif held.value != cid:
        _name_call(wallet, "set_value", (name, cid))
        expiry, action = held.expiry, "updated"
    else:
        expiry, action = held.expiry, "unchanged"
    if expiry is None:
        expiry = resolve(wallet.client, name).expiry
    return Published(
        name=name,
        cid=cid,
        size=len(archive),
        files=len(site.files),
        deal=deal,
        stored=result is not None,
        action=action,
        expiry=expiry,
        previous=None if held is None else held.value,
        put=result,
    )


# -- serving ---------------------------------------------------------------------------------------


class SiteStore:
    """Resolves names and fetches, verifies and caches sites for one node (thread-safe):
    ``rpc`` is its user RPC, ``cache`` the folder of verified archives (None: memory only)."""

    def __init__(
        self,
        rpc: str,
        cache: Path | None,
        memory_bytes: int = MEMORY_CACHE_BYTES,
        stall_s: float = retrieve.STALL_S,
    ) -> None:
        self.rpc = rpc
        self.cache = cache
        self.memory_bytes = memory_bytes
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._fetching: dict[bytes, threading.Lock] = {}
        self._memory: OrderedDict[bytes, Site] = OrderedDict()

    def resolve(self, name: str) -> bytes:
        """The content id ``name`` resolves to; :class:`BadSite` for a malformed name,
        :class:`SiteNotFound` if it is not held."""
        return resolve(self.rpc, name).value

    def site(self, cid: bytes) -> Site:
        """The site stored under ``cid``: from memory, the cache folder, or its providers
        (verified against ``cid``). :class:`SiteNotFound` if no open deal stores it,
        :class:`SiteUnavailable` if it cannot be had whole or is no site."""
        with self._lock:
            found = self._remembered(cid)
            if found is not None:
                return found
            fetching = self._fetching.setdefault(cid, threading.Lock())
        try:
            with fetching:  # one fetch per content id at a time; the others wait and find it
                with self._lock:
                    found = self._remembered(cid)
                if found is None:
                    found = self._cached(cid) or self._fetch(cid)
                    with self._lock:
                        self._remember(cid, found)
        finally:
            with self._lock:
                self._fetching.pop(cid, None)
        return found

    def _remembered(self, cid: bytes) -> Site | None:
        found = self._memory.get(cid)
        if found is not None:
            self._memory.move_to_end(cid)
        return found

    def _remember(self, cid: bytes, site: Site) -> None:
        self._memory[cid] = site
        self._memory.move_to_end(cid)
        while sum(s.size for s in self._memory.values()) > self.memory_bytes and self._memory:
            self._memory.popitem(last=False)

    def _cache_file(self, cid: bytes) -> Path | None:
        return None if self.cache is None else self.cache / f"{cid.hex()}.site"

    def _cached(self, cid: bytes) -> Site | None:
        path = self._cache_file(cid)
        if path is None or not path.is_file():
            return None
        try:
            return unpack(read_bounded(path, MAX_SITE_SIZE, "cached site"))
        except (FileReadError, BadSite):
            path.unlink(missing_ok=True)  # damaged: fetch it again
            return None

    def _fetch(self, cid: bytes) -> Site:
        shown = cid.hex()
        try:
            with MarketView(self.rpc) as view:
                content = retrieve.locate(view, cid)
        except storage.NotFound:
            raise SiteNotFound(f"no open deal stores {shown}") from None
        except (StorageClientError, MarketError) as exc:
            raise SiteUnavailable(f"cannot locate {shown}: {exc}") from None
        except WalletError as exc:
            raise SiteError(f"cannot ask the node where {shown} is stored: {exc}") from None
        if content.encrypted:
            raise SiteUnavailable(f"{shown} is encrypted: a site is stored in clear")
        if content.size > MAX_SITE_SIZE:
            raise SiteUnavailable(
                f"{shown} stores {content.size} bytes, more than a site's {MAX_SITE_SIZE}"
            )
        try:
            got = retrieve.download(content, stall_s=self.stall_s)
        except StorageClientError as exc:
            raise SiteUnavailable(f"cannot fetch {shown} whole from its providers: {exc}") from None
        try:
            site = unpack(got.data)
        except BadSite as exc:
            raise SiteUnavailable(f"{shown} is no site archive: {exc}") from None
        path = self._cache_file(cid)
        if path is not None:
            with contextlib.suppress(OSError):  # served from memory; the cache is only a cache
                write_atomically(path, got.data)
        return site


def parse_cid(text: str) -> bytes:
    """A content id from 64 hex digits; :class:`BadSite` otherwise."""
    try:
        return storage.parse_cid(text)
    except StorageClientError as exc:
        raise BadSite(str(exc)) from None
