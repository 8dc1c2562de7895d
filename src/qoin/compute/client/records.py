"""Job records (docs/spec/compute.md §6.4): the spec and the job key a client keeps, sealed
under a key of its keystore, and where each replica's outputs were stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qoin.compute import jobspec
from qoin.compute.client.base import ComputeClientError
from qoin.crypto.hybrid import HybridKeyPair
from qoin.storage import crypt

MAX_RECORD: Final = 512 * 1024
"""The largest job record file read."""
JOBS_DIR: Final = Path("compute") / "jobs"
"""Where job records live, under ``$QOIN_HOME``."""
INFO_RECORD: Final = b"QOIN/compute/client-jobs/v1"


def jobs_dir(home: Path) -> Path:
    """Where the job records of ``$QOIN_HOME`` live."""
    return home / JOBS_DIR


def _record_cipher(keypair: HybridKeyPair) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), 32, salt=None, info=INFO_RECORD).derive(crypt.master_key(keypair))
    return ChaCha20Poly1305(key)


@dataclass(frozen=True)
class JobRecord:
    """What the client keeps of a job it ran: the spec and the job key (sealed under a key of
    its keystore), and where its outputs were stored."""

    deal: int
    job: bytes
    spec: bytes
    job_key: bytes
    outputs: dict[int, str] = field(default_factory=dict)
    """replica -> CID of its stored outputs archive, once known."""

    def path(self, directory: Path) -> Path:
        return directory / f"{self.deal}-{self.job.hex()[:16]}.json"

    def save(self, directory: Path, keypair: HybridKeyPair) -> Path:
        nonce = os.urandom(12)
        sealed = nonce + _record_cipher(keypair).encrypt(nonce, self.job_key, self.job)
        obj = {
            "deal": self.deal,
            "job": self.job.hex(),
            "spec": self.spec.hex(),
            "jobKey": sealed.hex(),
            "outputs": {str(k): v for k, v in sorted(self.outputs.items())},
        }
        directory.mkdir(parents=True, exist_ok=True)
        path = self.path(directory)
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(obj, indent=2) + "\n")
        os.chmod(temp, 0o600)
        temp.replace(path)
        return path


def load_record(
    directory: Path, deal_id: int, job: bytes, keypair: HybridKeyPair
) -> JobRecord | None:
    """The record of deal ``deal_id`` for job ``job`` (None: none kept here);
    :class:`ComputeClientError` if it is damaged or another keystore's."""
    path = directory / f"{deal_id}-{job.hex()[:16]}.json"
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()[: MAX_RECORD + 1]
        if len(raw) > MAX_RECORD:
            raise ValueError("too large")
        obj = json.loads(raw)
        spec = bytes.fromhex(obj["spec"])
        sealed = bytes.fromhex(obj["jobKey"])
        outputs = {int(k): str(v) for k, v in dict(obj.get("outputs") or {}).items()}
        if obj["deal"] != deal_id or bytes.fromhex(obj["job"]) != job:
            raise ValueError("another deal's")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ComputeClientError(f"job record {path} is unusable: {exc}") from None
    if jobspec.job_hash(spec) != job:
        raise ComputeClientError(f"job record {path} holds a spec of another job")
    try:
        job_key = _record_cipher(keypair).decrypt(sealed[:12], sealed[12:], job)
    except (InvalidTag, ValueError):
        raise ComputeClientError(
            f"job record {path} was written with another keystore: give the one that ran the job"
        ) from None
    return JobRecord(deal_id, job, spec, job_key, outputs)
