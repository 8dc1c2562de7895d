"""A revealed result's outputs (docs/spec/compute.md §6.2): straight from its provider first (sent
encrypted under a key derived from the job key), else its copy in the storage market by CID
(stored encrypted under another); either way decrypted, then verified against the root revealed
on chain and unpacked beside the destination, moved there only when whole.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qoin.compute import delivery, keys
from qoin.compute.client.api import ProviderApi
from qoin.compute.client.base import (
    EXIT_NOT_RUN,
    MAX_OUTPUT_ARCHIVE,
    OUTPUTS_DIR,
    OUTPUTS_WAIT_S,
    REASON_EXIT,
    RECONNECT_S,
    STDOUT_FILE,
    BadOptions,
    ComputeClientError,
    _reason,
)
from qoin.compute.jobspec import OutputLimits
from qoin.crypto.address import Address
from qoin.errors import QoinError
from qoin.storage import retrieve
from qoin.storage.client import NO_PROGRESS, Progress
from qoin.storage.market import MarketView


@dataclass(frozen=True)
class SavedOutputs:
    """A replica's outputs, fetched, verified against its revealed root and written out."""

    replica: int
    provider: Address
    root: bytes
    cid: str
    out: Path
    reason: str
    """Why the job ended (``exited``, ``timeout``, ...; from the verified manifest)."""
    exit_code: int | None
    files: tuple[str, ...]
    """The output files' paths."""
    size: int
    """Bytes of the archive fetched."""
    source: str = ""
    """Where it came from: ``provider`` (``GET /jobs/{deal}/outputs``) or ``storage`` (the
    storage market, by its CID)."""

    @property
    def job_exit(self) -> int:
        """The exit status ``run`` gives for this result."""
        if self.reason == "exited":
            return 0 if self.exit_code is None else self.exit_code
        return REASON_EXIT.get(self.reason, EXIT_NOT_RUN)

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "provider": str(self.provider),
            "root": self.root.hex(),
            "cid": self.cid,
            "out": str(self.out),
            "reason": self.reason,
            "exitCode": self.exit_code,
            "files": list(self.files),
            "archiveSize": self.size,
            "source": self.source or None,
        }


def check_out_dir(out: Path) -> None:
    """:class:`BadOptions` unless ``out`` can receive outputs: missing (its parent a directory)
    or an empty directory."""
    if out.exists():
        if not out.is_dir():
            raise BadOptions(f"{out} exists and is not a directory: name a new one (--out)")
        if any(out.iterdir()):
            raise BadOptions(f"{out} is not empty: name a new directory (--out)")
        return
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BadOptions(f"{parent} is not a directory: cannot write {out}")


class _WrongRoot(ComputeClientError):
    """A provider serves outputs of another root than the one it revealed."""


class _NotVerified(ComputeClientError):
    """Outputs that do not verify against the revealed root (or the spec's output limits)."""


def _served_cid(api: ProviderApi, deal_id: int, root: bytes) -> tuple[str | None, str]:
    """(the CID of the copy the provider stored in the storage market for ``root``, or None;
    why not)."""
    status, answer = api.result(deal_id)
    if status != 200 or not isinstance(answer, dict):
        return None, _reason(answer, status)
    served = answer.get("root")
    if served != root.hex():
        raise _WrongRoot(
            f"{api.what} serves outputs of root {str(served)[:64]}, not the revealed {root.hex()}"
        )
    cid = answer.get("cid")
    if isinstance(cid, str) and re.fullmatch(r"[0-9a-f]{64}", cid):
        return cid, ""
    return None, "its copy is not in the storage market yet"


def _learn_cid(api: ProviderApi, deal_id: int, root: bytes) -> tuple[str | None, str]:
    """:func:`_served_cid` that never raises: (CID or None, why not)."""
    try:
        return _served_cid(api, deal_id, root)
    except ComputeClientError as exc:
        return None, str(exc)


def _provider_says(api: ProviderApi, deal_id: int) -> str:
    """What the provider says of its job (state and detail), or why it says nothing."""
    try:
        state = api.job(deal_id)
    except ComputeClientError as exc:
        return str(exc)
    detail = f": {state.detail}" if state.detail else ""
    return f"{api.what} says its job is {state.state}{detail}"


def _unpack_into(
    archive: Path | bytes, out: Path, replica: int, root: bytes, limits: OutputLimits, what: str
) -> Any:
    """Unpack ``archive`` beside ``out``, verified against ``root`` and ``limits``, and move it
    to ``out`` when whole; its manifest. :class:`_NotVerified` if it does not verify."""
    from qoin.compute import outputs  # noqa: PLC0415 (the executors' side, loaded when used)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=_parent(out)))
    try:
        try:
            manifest = outputs.unpack(
                archive,
                staging / OUTPUTS_DIR,
                root,
                limits=limits,
                stdout=staging / STDOUT_FILE,
            )
        except QoinError as exc:
            raise _NotVerified(
                f"{what} (replica {replica}'s outputs) does not verify against its revealed "
                f"root: {exc}"
            ) from None
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _parent(out: Path) -> Path:
    return out.parent if str(out.parent) else Path(".")


def _saved(
    api: ProviderApi, replica: int, root: bytes, cid: str, out: Path, manifest: Any, size: int,
    source: str,
) -> SavedOutputs:  # fmt: skip
    return SavedOutputs(
        replica=replica,
        provider=api.provider,
        root=root,
        cid=cid,
        out=out,
        reason=str(manifest.reason),
        exit_code=manifest.exit_code,
        files=tuple(entry.path for entry in manifest.files),
        size=size,
        source=source,
    )


def _from_provider(
    api: ProviderApi,
    deal_id: int,
    replica: int,
    root: bytes,
    job_key: bytes,
    out: Path,
    limits: OutputLimits,
) -> SavedOutputs:
    """The outputs straight from the provider (``GET /jobs/{deal}/outputs``), decrypted and
    verified; :class:`~qoin.compute.delivery.NotServed` or :class:`_NotVerified` if not."""
    bound = min(MAX_OUTPUT_ARCHIVE, delivery.archive_bound(limits))
    handle, name = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".archive", dir=_parent(out))
    os.close(handle)
    archive = Path(name)
    try:
        size = api.outputs(deal_id, replica, job_key, archive, bound)
        manifest = _unpack_into(archive, out, replica, root, limits, f"what {api.what} served")
    finally:
        archive.unlink(missing_ok=True)
    cid, _ = _learn_cid(api, deal_id, root)
    return _saved(api, replica, root, cid or "", out, manifest, size, "provider")


def _from_storage(
    rpc: str,
    api: ProviderApi,
    deal_id: int,
    replica: int,
    root: bytes,
    job_key: bytes,
    out: Path,
    cid: str,
    progress: Progress,
    limits: OutputLimits,
) -> SavedOutputs:
    """The outputs from the storage market by ``cid``, decrypted and verified;
    :class:`ComputeClientError` (:class:`_NotVerified`) if not."""
    master = keys.output_master(job_key, deal_id, replica)
    try:
        with MarketView(rpc) as storage:
            content = retrieve.locate(storage, bytes.fromhex(cid))
        if content.size > MAX_OUTPUT_ARCHIVE:
            raise ComputeClientError(
                f"the outputs archive {cid} stores {content.size} bytes, over {MAX_OUTPUT_ARCHIVE}"
            )
        archive = retrieve.download(content, master, progress).data
    except QoinError as exc:
        if isinstance(exc, ComputeClientError):
            raise
        raise ComputeClientError(f"the outputs archive {cid} could not be fetched: {exc}") from None
    what = f"the copy {cid[:16]} in the storage market"
    manifest = _unpack_into(archive, out, replica, root, limits, what)
    return _saved(api, replica, root, cid, out, manifest, len(archive), "storage")


def fetch_outputs(
    rpc: str,
    api: ProviderApi,
    deal_id: int,
    replica: int,
    root: bytes,
    job_key: bytes,
    out: Path,
    cid: str | None = None,
    progress: Progress = NO_PROGRESS,
    wait_s: float = OUTPUTS_WAIT_S,
    stop: threading.Event | None = None,
    limits: OutputLimits | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> SavedOutputs:
    """Replica ``replica``'s outputs, unpacked into ``out`` verified against ``root`` (written
    beside ``out`` first, moved there only when whole): the files under ``out/outputs/``, the
    job's stdout in ``out/stdout``. Straight from the provider first (``GET
    /jobs/{deal}/outputs``, one hop, decrypted with the replica's transit key); else the copy it
    stored in the storage market (by ``cid``, or the CID the provider names), decrypted with the
    output master. Bytes that do not verify count as outputs that cannot be had. Asked again until they come, for at most ``wait_s``
    seconds (or until ``stop`` is set), ``on_wait`` told what is awaited and why whenever that
    changes; then :class:`ComputeClientError` saying why and what to do. ``limits``: the spec's
    output limits (an archive over them is refused)."""
    from qoin.compute import outputs  # noqa: PLC0415 (the executors' side, loaded when used)

    check_out_dir(out)
    limits = limits or outputs.UNLIMITED
    deadline = time.monotonic() + wait_s
    direct_bad = False
    stored_bad: set[str] = set()
    said = ""
    tries = 0
    while True:
        problems: list[str] = []
        if not direct_bad:
            try:
                return _from_provider(api, deal_id, replica, root, job_key, out, limits)
            except _NotVerified as exc:
                direct_bad = True
                problems.append(str(exc))
            except delivery.NotServed as exc:
                problems.append(f"{api.what} did not hand them over ({exc})")
        if cid is None:
            cid, why = _learn_cid(api, deal_id, root)
            if cid is None:
                problems.append(f"no copy in the storage market is known ({why})")
        if cid is not None and cid not in stored_bad:
            try:
                return _from_storage(
                    rpc, api, deal_id, replica, root, job_key, out, cid, progress, limits
                )
            except _NotVerified as exc:
                stored_bad.add(cid)
                problems.append(str(exc))
            except ComputeClientError as exc:
                problems.append(str(exc))
        says = _provider_says(api, deal_id)
        why = "; ".join(problems)
        if (
            (direct_bad and cid in stored_bad)  # both copies had: neither verifies
            or time.monotonic() >= deadline
            or (stop is not None and stop.is_set())
        ):
            raise ComputeClientError(
                f"the outputs of replica {replica} of deal {deal_id} could not be had: {why} "
                f"({says}). Fetch them later with: qoin compute get {deal_id} --out DIR"
            )
        waiting = f"waiting for replica {replica}'s outputs: {why} ({says})"
        # Not on the first miss: a provider that follows the chain a block behind the client
        # (it has not seen its own reveal land yet) hands the outputs over at the next try.
        if on_wait is not None and waiting != said and tries > 0:
            on_wait(waiting)
            said = waiting
        time.sleep(RECONNECT_S[min(tries, len(RECONNECT_S) - 1)])
        tries += 1
