"""Verified retrieval (``qoin storage get``; docs/spec/storage.md §2, §5).

:func:`locate` reads a content id's open deal from the chain: its size, shard size, k, flags and
committed shard roots (checked to give the content id), and where each shard's holders serve it
(the shard's provider, and a provider that left it while it may still hold it).

:func:`download` fetches from every holder at once. Each stream is verified as it arrives: the
shard tree's level-c nodes (``GET .../nodes``) against the committed root first, then every 64 KiB
chunk against its node, so a holder that sends one wrong byte is dropped at that chunk, never
trusted for the rest. A holder that stalls (no byte for ``stall_s`` seconds, or slower on average
than :data:`MIN_RATE`) is dropped too. Verified chunks go to an anonymous temporary file per
stream (memory stays bounded however many holders answer); once k shards are whole the other
streams are stopped, the file is decoded (:func:`qoin.storage.erasure.decode`) and, when the deal's
flags say so, decrypted (:func:`qoin.storage.crypt.decrypt`).

:func:`save` writes the result to a temporary file beside the destination and renames it only when
whole (:func:`qoin.files.write_atomically`): a failed retrieval never leaves a partial file.
:func:`fetch` is the library form (``fetch(url, cid) -> bytes``).
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import httpx

from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE
from qoin.errors import QoinError
from qoin.files import write_atomically
from qoin.storage import crypt, erasure, merkle
from qoin.storage.client import (
    FLAG_ENCRYPTED,
    HTTP_CONNECT_S,
    MAX_PUT_SIZE,
    NO_PROGRESS,
    NotFound,
    Progress,
    ProgressTask,
    StorageClientError,
    endpoint_url,
)
from qoin.storage.market import MarketView

STALL_S: Final = 10.0
"""Seconds a holder may send nothing (connecting, the nodes, the shard) before it is dropped."""
MIN_RATE: Final = 64 * 1024
"""Bytes per second a holder must average, after its first ``stall_s`` seconds."""
MAX_STORED_SIZE: Final = crypt.encrypted_size(MAX_PUT_SIZE)
"""The largest stored file retrieved (what ``put`` can store), checked before anything is
fetched."""


class RetrievalError(StorageClientError):
    """The content could not be retrieved whole; the message says what each holder did."""


class SourceDropped(QoinError):
    """One holder's stream was dropped (bad data, a stall, a refusal); the message says why."""


@dataclass(frozen=True)
class Source:
    """A provider that should hold one shard."""

    index: int
    """The shard."""
    provider: Address
    """The provider."""
    endpoint: str
    """Its ``host:port``."""


@dataclass(frozen=True)
class Content:
    """What retrieval needs to know of a content id: the deal's shape and the shards' holders."""

    cid: bytes
    """The content id."""
    deal: int
    """The deal storing it (the shard URLs name it)."""
    size: int
    """Bytes stored (after encryption)."""
    shard_size: int
    """Bytes per shard."""
    k: int
    """Shards that rebuild the file."""
    flags: int
    """The deal's flags (:data:`~qoin.storage.client.FLAG_ENCRYPTED`)."""
    leaf_size: int
    """Bytes per leaf of the shard trees (the market's parameter)."""
    roots: tuple[bytes, ...]
    """The committed shard roots."""
    sources: tuple[Source, ...]
    """Who serves which shard."""

    @property
    def n(self) -> int:
        """Shards."""
        return len(self.roots)

    @property
    def encrypted(self) -> bool:
        """Whether the stored bytes are encrypted."""
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def leaf_count(self) -> int:
        """Leaves per shard."""
        return self.shard_size // self.leaf_size

    def problem(self) -> str | None:
        """Why the content cannot be retrieved as described, or None."""
        if not 1 <= self.k < self.n <= merkle.MAX_SHARDS:
            return f"k = {self.k} of n = {self.n} shards is no valid code"
        if not 0 <= self.size <= MAX_STORED_SIZE:
            return f"it stores {self.size} bytes, more than the {MAX_STORED_SIZE} retrieved"
        try:
            expected = merkle.shard_size_for(self.size, self.k, self.leaf_size)
            cid = merkle.content_id(self.roots)
        except merkle.StorageMerkleError as exc:
            return str(exc)
        checks = (
            (expected == self.shard_size, f"its shard size {self.shard_size} is not {expected}"),
            (cid == self.cid, "its shard roots do not give its content id"),
            (
                all(0 <= source.index < self.n for source in self.sources),
                "a holder is named for a shard the deal does not have",
            ),
        )
        return next((reason for ok, reason in checks if not ok), None)


def locate(view: MarketView, cid: bytes) -> Content:
    """The open deal storing ``cid`` and its holders; :class:`NotFound` if there is none,
    :class:`RetrievalError` if the deal makes no sense."""
    deal_id = view.deal_of(cid)
    deal = None if deal_id is None else view.get_deal(deal_id)
    if deal is None:
        raise NotFound(f"no open deal stores {cid.hex()} (qoin storage status {cid.hex()})")
    params = view.params()
    sources = []
    endpoints: dict[Address, str | None] = {}
    for shard in deal.shards:
        for holder in (shard.provider, shard.leaver):
            if holder is None:
                continue
            if holder not in endpoints:
                ask = view.get_ask(holder)
                endpoints[holder] = None if ask is None else ask.endpoint
            endpoint = endpoints[holder]
            if endpoint is not None:
                sources.append(Source(shard.index, holder, endpoint))
    content = Content(
        cid=cid,
        deal=deal.deal_id,
        size=deal.size,
        shard_size=deal.shard_size,
        k=deal.k,
        flags=deal.flags,
        leaf_size=params.leaf_size,
        roots=tuple(shard.root for shard in deal.shards),
        sources=tuple(sources),
    )
    problem = content.problem()
    if problem is not None:
        raise RetrievalError(f"deal {deal.deal_id} for {cid.hex()}: {problem}")
    return content


# -- one stream ------------------------------------------------------------------------------------


def _get_nodes(http: httpx.Client, url: str, expected: int, stall_s: float) -> bytes:
    """The level-c nodes (exactly ``expected`` bytes, read no further)."""
    raw = bytearray()
    deadline = time.monotonic() + stall_s + expected / MIN_RATE
    with http.stream("GET", url, timeout=httpx.Timeout(stall_s, connect=HTTP_CONNECT_S)) as answer:
        if answer.status_code != 200:
            raise SourceDropped(f"the nodes request answered HTTP {answer.status_code}")
        _check_identity(answer)
        for piece in answer.iter_raw():
            raw += piece
            if len(raw) > expected:
                raise SourceDropped(f"sent more than the {expected} bytes of nodes")
            if time.monotonic() > deadline:
                raise SourceDropped("sent the nodes too slowly")
    return bytes(raw)


def _check_identity(answer: httpx.Response) -> None:
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise SourceDropped(f"sent the shard {encoding}-encoded")


def fetch_shard(
    http: httpx.Client,
    content: Content,
    source: Source,
    sink: IO[bytes],
    stop: threading.Event,
    bar: ProgressTask,
    stall_s: float = STALL_S,
) -> None:
    """Fetch ``source``'s shard into ``sink``, verifying every chunk before it is written;
    :class:`SourceDropped` saying why the stream was given up (``stop`` set: no longer needed)."""
    base = f"{endpoint_url(source.endpoint)}/v1/shards/{content.deal}/{source.index}"
    leaf_count, leaf_size = content.leaf_count, content.leaf_size
    count = merkle.chunk_count(leaf_count, leaf_size)
    nodes = _get_nodes(http, base + "/nodes", count * HASH_SIZE, stall_s)
    if not merkle.verify_chunk_nodes(content.roots[source.index], nodes, leaf_count, leaf_size):
        raise SourceDropped("its tree nodes do not give the committed root")
    deadline = time.monotonic() + stall_s + content.shard_size / MIN_RATE
    timeout = httpx.Timeout(stall_s, connect=HTTP_CONNECT_S)
    chunk = 0
    start, end = merkle.chunk_bounds(0, leaf_count, leaf_size)
    buffer = bytearray()
    with http.stream("GET", base, timeout=timeout) as answer:
        if answer.status_code != 200:
            raise SourceDropped(f"the shard request answered HTTP {answer.status_code}")
        _check_identity(answer)
        for piece in answer.iter_raw():
            if stop.is_set():
                raise SourceDropped("not needed: k shards are whole")
            if time.monotonic() > deadline:
                raise SourceDropped(f"too slow: under {MIN_RATE} bytes per second")
            buffer += piece
            while chunk < count and len(buffer) >= end - start:
                data = bytes(buffer[: end - start])
                if not merkle.verify_chunk(nodes, chunk, data, leaf_count, leaf_size):
                    raise SourceDropped(f"chunk {chunk} (bytes {start}-{end - 1}) is wrong")
                sink.write(data)
                del buffer[: end - start]
                bar.advance(len(data))
                chunk += 1
                if chunk < count:
                    start, end = merkle.chunk_bounds(chunk, leaf_count, leaf_size)
            if chunk == count and buffer:
                raise SourceDropped(f"sent more than the shard's {content.shard_size} bytes")
    if chunk != count:
        raise SourceDropped(
            f"the shard ended after {start + len(buffer)} of {content.shard_size} bytes"
        )


# -- all streams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retrieved:
    """A retrieved file."""

    content: Content
    """What was retrieved."""
    data: bytes
    """The file (decrypted)."""
    used: tuple[Source, ...]
    """The k holders whose shards rebuilt it."""
    dropped: tuple[tuple[Source, str], ...]
    """Holders given up, and why."""


def _worker(
    http: httpx.Client,
    content: Content,
    source: Source,
    stop: threading.Event,
    results: queue.Queue[tuple[Source, IO[bytes] | None, str]],
    progress: Progress,
    stall_s: float,
    spill: Path | None,
) -> None:
    bar = progress.task(f"shard {source.index} <- {source.endpoint}", content.shard_size)
    try:
        sink = tempfile.TemporaryFile(dir=spill)  # noqa: SIM115 (handed to the collector)
    except OSError as exc:
        bar.done("failed")
        results.put((source, None, f"no temporary file: {exc.strerror}"))
        return
    try:
        fetch_shard(http, content, source, sink, stop, bar, stall_s)
    except (SourceDropped, StorageClientError) as exc:
        reason = str(exc)
    except httpx.TimeoutException:
        reason = f"stalled: nothing for {stall_s:g} s"
    except httpx.HTTPError as exc:
        reason = f"unreachable: {exc}"
    except Exception as exc:  # any other failure drops the stream; the collector must hear of it
        reason = f"{type(exc).__name__}: {exc}"
    else:
        bar.done()
        results.put((source, sink, ""))
        return
    sink.close()
    bar.done("not needed" if stop.is_set() else "dropped")
    results.put((source, None, reason))


def download(
    content: Content,
    master: bytes | None = None,
    progress: Progress = NO_PROGRESS,
    stall_s: float = STALL_S,
    spill: Path | None = None,
    http: httpx.Client | None = None,
    file_key: bytes | None = None,
) -> Retrieved:
    """Fetch ``content`` from all its holders at once, verified (see the module docstring), and
    decode and decrypt it (``master``: the keystore's master key, needed for encrypted content;
    or ``file_key``, the key of this one file, see :func:`file_key_of`). Verified shards are
    spilled to anonymous files in ``spill`` (default: the system's temporary directory).
    :class:`RetrievalError` if it cannot be had whole."""
    problem = content.problem()
    if problem is not None:
        raise RetrievalError(f"{content.cid.hex()}: {problem}")
    if content.encrypted and master is None and file_key is None:
        raise RetrievalError(
            f"{content.cid.hex()} is encrypted: give the keystore that stored it (--key)"
        )
    if not content.sources:
        raise RetrievalError(f"no provider serves any shard of {content.cid.hex()}")
    own = http is None
    client = http or httpx.Client(
        headers={"accept-encoding": "identity"}, follow_redirects=False, timeout=stall_s
    )
    stop = threading.Event()
    results: queue.Queue[tuple[Source, IO[bytes] | None, str]] = queue.Queue()
    whole: dict[int, tuple[Source, IO[bytes]]] = {}
    dropped: list[tuple[Source, str]] = []
    threads = [
        threading.Thread(
            target=_worker,
            args=(client, content, source, stop, results, progress, stall_s, spill),
            name=f"fetch-shard-{source.index}",
            daemon=True,  # a stalled stream left behind must not hold the process
        )
        for source in content.sources
    ]
    try:
        for thread in threads:
            thread.start()
        _collect(results, len(threads), content.k, whole, dropped)
        stop.set()
        if len(whole) < content.k:
            reasons = "; ".join(f"shard {s.index} from {s.endpoint}: {why}" for s, why in dropped)
            raise RetrievalError(
                f"only {len(whole)} of the {content.k} shards needed could be fetched whole "
                f"({reasons or 'no holder'})"
            )
        shards = {}
        for index, (_, sink) in whole.items():
            sink.seek(0)
            shards[index] = sink.read(content.shard_size)
    finally:
        stop.set()
        for _, sink in whole.values():
            sink.close()
        if own:
            _close_later(client, threads)
    data = _decoded(content, shards, master, file_key)
    used = tuple(source for source, _ in sorted(whole.values(), key=lambda item: item[0].index))
    return Retrieved(content, data, used, tuple(dropped))


def _collect(
    results: queue.Queue[tuple[Source, IO[bytes] | None, str]],
    pending: int,
    k: int,
    whole: dict[int, tuple[Source, IO[bytes]]],
    dropped: list[tuple[Source, str]],
) -> None:
    """Take the streams' outcomes as they end until k distinct shards are whole or every stream
    has ended (``whole`` and ``dropped`` are filled in)."""
    while pending and len(whole) < k:
        source, sink, reason = results.get()
        pending -= 1
        if sink is None:
            dropped.append((source, reason))
        elif source.index in whole:
            sink.close()
        else:
            whole[source.index] = (source, sink)


def _close_later(client: httpx.Client, threads: list[threading.Thread]) -> None:
    """Close ``client`` once the stream threads are done (stopped ones end at their next piece
    or read timeout), without making the caller wait for them."""
    if all(not thread.is_alive() for thread in threads):
        client.close()
        return

    def close() -> None:
        for thread in threads:
            thread.join()
        client.close()

    threading.Thread(target=close, name="fetch-close", daemon=True).start()


def _decoded(
    content: Content, shards: dict[int, bytes], master: bytes | None, file_key: bytes | None = None
) -> bytes:
    try:
        stored = erasure.decode(shards, content.n, content.k, content.size)
    except erasure.ErasureError as exc:
        raise RetrievalError(f"the verified shards do not decode: {exc}") from None
    if not content.encrypted:
        return stored
    if file_key is not None:
        try:
            return crypt.decrypt_with_file_key(stored, file_key)
        except crypt.CryptError as exc:
            raise RetrievalError(
                f"{content.cid.hex()} does not decrypt with the file key given ({exc})"
            ) from None
    if master is None:  # checked before fetching; kept for the type checker
        raise RetrievalError(f"{content.cid.hex()} is encrypted: give its keystore (--key)")
    try:
        return crypt.decrypt(stored, master)
    except crypt.CryptError as exc:
        raise RetrievalError(
            f"{content.cid.hex()} does not decrypt with this keystore ({exc}): give the "
            "keystore that stored it"
        ) from None


def save(
    content: Content,
    out: Path,
    master: bytes | None = None,
    progress: Progress = NO_PROGRESS,
    stall_s: float = STALL_S,
) -> Retrieved:
    """:func:`download` ``content`` and write it to ``out`` (a temporary file beside it, renamed
    when whole; shards spill beside it too). Nothing is written if retrieval fails."""
    if out.is_dir():
        raise RetrievalError(f"{out} is a directory: name the file to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise RetrievalError(f"{parent} is not a directory")
    retrieved = download(content, master, progress, stall_s, spill=parent)
    try:
        write_atomically(out, retrieved.data)
    except OSError as exc:
        raise RetrievalError(f"cannot write {out}: {exc.strerror}") from None
    return retrieved


def fetch(
    url: str,
    cid: bytes,
    master: bytes | None = None,
    stall_s: float = STALL_S,
    file_key: bytes | None = None,
    max_size: int = MAX_STORED_SIZE,
) -> bytes:
    """The file stored under ``cid``, retrieved and verified through the node at ``url`` (its
    user RPC) and the deal's providers; ``master`` (or the file's own ``file_key``) decrypts it
    (encrypted content). :class:`RetrievalError` if it stores more than ``max_size`` bytes."""
    with MarketView(url) as view:
        content = locate(view, cid)
    if content.size > max_size:
        raise RetrievalError(
            f"{cid.hex()} stores {content.size} bytes, more than the {max_size} expected"
        )
    return download(content, master, stall_s=stall_s, file_key=file_key).data


def _first_chunk(http: httpx.Client, content: Content, source: Source, stall_s: float) -> bytes:
    """Chunk 0 of ``source``'s shard, verified against the committed root."""
    base = f"{endpoint_url(source.endpoint)}/v1/shards/{content.deal}/{source.index}"
    leaf_count, leaf_size = content.leaf_count, content.leaf_size
    count = merkle.chunk_count(leaf_count, leaf_size)
    nodes = _get_nodes(http, base + "/nodes", count * HASH_SIZE, stall_s)
    if not merkle.verify_chunk_nodes(content.roots[source.index], nodes, leaf_count, leaf_size):
        raise SourceDropped("its tree nodes do not give the committed root")
    start, end = merkle.chunk_bounds(0, leaf_count, leaf_size)
    answer = http.get(
        base,
        headers={"range": f"bytes={start}-{end - 1}", "accept-encoding": "identity"},
        timeout=httpx.Timeout(stall_s, connect=HTTP_CONNECT_S),
    )
    if answer.status_code not in (200, 206):
        raise SourceDropped(f"the range request answered HTTP {answer.status_code}")
    _check_identity(answer)
    data = answer.content[: end - start] if answer.status_code == 200 else answer.content
    if not merkle.verify_chunk(nodes, 0, data, leaf_count, leaf_size):
        raise SourceDropped("the first chunk of the shard is wrong")
    return data


def file_key_of(view: MarketView, cid: bytes, master: bytes, stall_s: float = STALL_S) -> bytes:
    """The file key (:func:`qoin.storage.crypt.file_key`) of the encrypted content ``cid``
    stored under ``master``: its salt is read from the stored header (the first chunk of shard
    0, or of any shard when k = 1, fetched with one range request and verified against the
    committed root). Handing out the file key lets another party (a compute provider) decrypt
    this one file and nothing else. :class:`NotFound` if no open deal stores it,
    :class:`RetrievalError` if it is not encrypted or no holder serves its first chunk."""
    content = locate(view, cid)
    if not content.encrypted:
        raise RetrievalError(f"{cid.hex()} is not encrypted: it has no file key")
    sources = [s for s in content.sources if s.index == 0 or content.k == 1]
    if not sources:
        raise RetrievalError(f"no provider serves the first shard of {cid.hex()}")
    reasons = []
    with httpx.Client(follow_redirects=False, timeout=stall_s) as http:
        for source in sources:
            try:
                header = _first_chunk(http, content, source, stall_s)[: crypt.HEADER_SIZE]
                return crypt.file_key(master, crypt.salt_of(header))
            except (SourceDropped, crypt.CryptError) as exc:
                reasons.append(f"shard {source.index} from {source.endpoint}: {exc}")
            except httpx.HTTPError as exc:
                reasons.append(f"shard {source.index} from {source.endpoint}: unreachable: {exc}")
    raise RetrievalError(f"cannot read the header of {cid.hex()}: " + "; ".join(reasons))


def file_key(url: str, cid: bytes, master: bytes, stall_s: float = STALL_S) -> bytes:
    """:func:`file_key_of` through the node at ``url`` (its user RPC)."""
    with MarketView(url) as view:
        return file_key_of(view, cid, master, stall_s)
