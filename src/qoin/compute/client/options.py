"""A job's options (``run`` and ``local``): its inputs, environment and resources, into a job spec
(docs/spec/compute.md §2); how ``run`` chooses providers and pays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qoin.compute.client.base import DEFAULT_DEADLINE_BLOCKS, BadOptions
from qoin.compute.jobspec import (
    Determinism,
    Executor,
    Input,
    JobSpec,
    JobSpecError,
    OutputLimits,
    Resources,
    Verification,
)
from qoin.compute.params import MAX_COLLATERAL_PPM, ComputeParams
from qoin.crypto.address import Address
from qoin.crypto.hashing import tagged_hash

_INPUT = re.compile(r"(?:0x)?([0-9a-fA-F]{64}):(/.*)")
_ENV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


@dataclass(frozen=True)
class InputRef:
    """An input as given on the command line: ``CID:/path`` (a storage-market file) or, for
    ``local`` only, ``FILE:/path``."""

    path: str
    """Where the job sees it."""
    cid: bytes | None = None
    """Its content id, for a stored file."""
    file: Path | None = None
    """A local file (``local``)."""


def parse_input(text: str, *, local: bool = False) -> InputRef:
    """``CID:/path`` (64 hex digits); with ``local``, also ``FILE:/path``. :class:`BadOptions`
    saying why not."""
    found = _INPUT.fullmatch(text.strip())
    if found is not None:
        return InputRef(found[2], cid=bytes.fromhex(found[1]))
    if local and ":/" in text:
        name, _, rest = text.rpartition(":/")
        if name:
            return InputRef("/" + rest, file=Path(name))
    where = "CID:/path or FILE:/path" if local else "CID:/path (a content id from qoin storage put)"
    raise BadOptions(f"--input {text[:80]!r} is not {where}")


def parse_env(text: str) -> tuple[str, str]:
    """``NAME=VALUE``; :class:`BadOptions` if it is not."""
    found = _ENV.fullmatch(text)
    if found is None:
        raise BadOptions(f"--env {text[:80]!r} is not NAME=VALUE")
    return found[1], found[2]


@dataclass(frozen=True)
class JobOptions:
    """What a job asks for (``run`` and ``local`` options)."""

    command: tuple[str, ...] = ()
    executor: Executor = Executor.SANDBOX
    image: str = ""
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[InputRef, ...] = ()
    cpus: int = 1
    memory: int = 1 << 30
    gpus: int = 0
    gpu_model: str = ""
    timeout: int = 600
    network: bool = False
    determinism: Determinism = Determinism.EXACT
    verification: Verification = Verification.NONE
    outputs: OutputLimits = field(default_factory=OutputLimits)
    runtime: str = ""
    """A runtime ref ``name@id`` mounted read-only at ``/runtime`` (sandbox only; empty: none)."""

    def spec(self, keys_by_path: Mapping[str, bytes] | None = None) -> JobSpec:
        """The job spec (input keys from ``keys_by_path``, else empty); :class:`BadOptions` for
        a spec that breaks a rule (docs/spec/compute.md §2)."""
        wrapped = keys_by_path or {}
        items = []
        for ref in self.inputs:
            cid = ref.cid if ref.cid is not None else _local_cid(ref)
            items.append(Input(cid, ref.path, wrapped.get(ref.path, b"")))
        try:
            return JobSpec(
                executor=self.executor,
                command=self.command,
                image=self.image,
                env=self.env,
                inputs=tuple(items),
                resources=Resources(self.cpus, self.memory, self.gpus, self.gpu_model),
                timeout=self.timeout,
                network=self.network,
                determinism=self.determinism,
                verification=self.verification,
                outputs=self.outputs,
                runtime=self.runtime,
            )
        except JobSpecError as exc:
            raise BadOptions(str(exc).removeprefix("job spec: ")) from None


def _local_cid(ref: InputRef) -> bytes:
    """A stand-in content id for a local input (its path's hash: ``local`` never fetches it)."""
    return tagged_hash(b"QOIN/compute/local-input/v1", str(ref.file).encode())


@dataclass(frozen=True)
class MarketOptions:
    """How ``run`` chooses providers and pays."""

    max_price: int | None = None
    """Shor per CPU-second at most (None: the dearest provider considered)."""
    max_gpu_price: int | None = None
    """Shor per GPU-second at most (None: the dearest considered)."""
    min_collateral_ppm: int = 0
    """The least collateral multiple k (ppm) a provider must offer."""
    max_fee: int | None = None
    """The most a mediator may charge (None: any)."""
    deadline_blocks: int = DEFAULT_DEADLINE_BLOCKS
    """Blocks the bid stays open."""
    providers: tuple[Address, ...] = ()
    """Only these providers (empty: any)."""


def check_options(spec: JobSpec, options: MarketOptions, params: ComputeParams) -> None:
    """:class:`BadOptions` unless the network's market can take a job ``spec`` with ``options``."""
    if spec.timeout > params.max_timeout:
        raise BadOptions(
            f"--timeout is at most {params.max_timeout} seconds on this network, got {spec.timeout}"
        )
    if options.min_collateral_ppm > MAX_COLLATERAL_PPM:
        raise BadOptions(f"the collateral multiple is at most {MAX_COLLATERAL_PPM} ppm (k = 100)")
    if options.deadline_blocks < 1:
        raise BadOptions("--deadline is at least 1 block")
