"""A revealed replica's outputs archive straight from its provider (docs/spec/compute.md §5.3,
§6.2): ``GET /jobs/{deal}/outputs``, authenticated as the deal's client or mediator, sent encrypted
under a key derived from the job key (:mod:`qoin.compute.transit`) and decrypted as it streams into
a file, with bounds on its size and on the time it takes.

This is the fast path (one hop, and no dependence on the storage market having room for the
archive); the caller verifies what it got (:func:`qoin.compute.outputs.unpack` against the root
revealed on chain) and falls back to the copy the provider stored in the storage market, by its
CID. Bytes that do not verify count as outputs that could not be fetched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import httpx

from qoin.compute import outputs, transit
from qoin.compute.jobspec import OutputLimits
from qoin.errors import QoinError

CONNECT_S: Final = 10.0
READ_S: Final = 60.0
"""Seconds a provider may send nothing (its answer, or the next bytes of the archive)."""
GRACE_S: Final = 60.0
MIN_RATE: Final = 64 * 1024
"""Bytes per second a download must average after its first :data:`GRACE_S` seconds."""
MAX_ERROR: Final = 64 * 1024
"""Bytes of a refusal's JSON read, at most."""
CHUNK: Final = 1 << 20


class NotServed(QoinError):
    """The provider did not hand the archive over: :attr:`status` is its HTTP status (409: not
    revealed yet; 404: it keeps no such job or archive), or 0 when it did not answer, cut the
    download, was too slow, sent more than it may or bytes that do not open with the job key."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def archive_bound(limits: OutputLimits) -> int:
    """The largest archive a job with output limits ``limits`` can leave: its manifest at
    ``limits.max_files`` entries, its stdout at ``max_log_bytes`` and its files at
    ``max_bytes``, with the archive's framing."""
    manifest = limits.max_files * (outputs.MAX_PATH + 32 + 16) + 256
    return len(outputs.MAGIC) + 10 + manifest + limits.max_log_bytes + limits.max_bytes


def _refusal(response: httpx.Response) -> str:
    raw = bytearray()
    for piece in response.iter_bytes():
        raw += piece
        if len(raw) > MAX_ERROR:
            break
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return f"HTTP {response.status_code}: {answer['error'][:300]}"
    return f"HTTP {response.status_code}"


def download(
    url: str,
    headers: Mapping[str, str],
    dest: Path,
    max_size: int,
    master: bytes,
    http: httpx.Client | None = None,
) -> int:
    """``GET url`` (a provider's ``.../jobs/{deal}/outputs``), decrypted under ``master`` (the
    replica's :func:`~qoin.compute.keys.outputs_transit_master`) into ``dest`` (created or
    truncated); the archive's bytes written. :class:`NotServed` if the answer is not 200 (its
    status and reason), or if the provider does not answer, declares or sends more than the
    encryption of ``max_size`` bytes, stalls :data:`READ_S` seconds, averages less than
    :data:`MIN_RATE` after :data:`GRACE_S` seconds, or sends bytes that do not authenticate
    (status 0). ``dest`` may hold a partial download then."""
    started = time.monotonic()
    bound = transit.sealed_archive_size(max_size)
    own = http is None
    client = http or httpx.Client(
        timeout=httpx.Timeout(READ_S, connect=CONNECT_S), follow_redirects=False
    )
    try:
        with client.stream("GET", url, headers=dict(headers)) as response:
            if response.status_code != 200:
                raise NotServed(response.status_code, _refusal(response))
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > bound:
                raise NotServed(
                    0, f"it offers {declared} bytes, more than the {bound} allowed (encrypted)"
                )
            received = written = 0
            opener = transit.ArchiveOpener(master)
            with dest.open("wb") as sink:
                for piece in response.iter_bytes(CHUNK):
                    received += len(piece)
                    if received > bound:
                        raise NotServed(0, f"it sent more than the {bound} bytes allowed")
                    plain = opener.feed(piece)
                    sink.write(plain)
                    written += len(plain)
                    elapsed = time.monotonic() - started
                    if elapsed > GRACE_S and received < MIN_RATE * (elapsed - GRACE_S):
                        raise NotServed(
                            0, f"it sends too slowly ({received} bytes in {elapsed:.0f} s)"
                        )
                if declared.isdigit() and received != int(declared):
                    raise NotServed(0, f"it sent {received} of the {declared} bytes it announced")
                plain = opener.finish()
                sink.write(plain)
                written += len(plain)
            return written
    except transit.TransitError as exc:
        raise NotServed(0, f"what it sent does not open with the job key: {exc}") from None
    except httpx.HTTPError as exc:
        raise NotServed(0, f"no answer: {exc or type(exc).__name__}") from None
    finally:
        if own:
            client.close()
