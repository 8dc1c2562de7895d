"""Keys of the compute market off chain (docs/spec/compute.md §5): the job key sealed to a
provider's (or mediator's) ML-KEM-768 key, the key its outputs are stored under, and the signed
header that authenticates a client or a mediator to a provider's per-job endpoints.

Sealed job key
    ``kem ciphertext (1,088) || nonce (12) || ChaCha20-Poly1305(k, nonce, job key, aad = job hash)``
    with ``k = HKDF-SHA256(ikm = ML-KEM shared secret, salt = job hash, info =
    "QOIN/compute/job-key/v1")``: only the holder of the KEM key opens it, and only for that job.
Output master
    ``HKDF-SHA256(ikm = job key, salt = deal id (8, BE) || replica (1), info =
    "QOIN/compute/outputs/v1")``: the storage-market master key (:mod:`qoin.storage.crypt`) under
    which replica ``replica`` of a deal stores its outputs archive. The client and the mediator hold
    the job key, so they can decrypt it; nobody else can.
Transit keys
    The same derivation with other labels, for what a provider's per-job endpoints send
    (:mod:`qoin.compute.transit`): ``HKDF-SHA256(ikm = job key, salt = deal id (8, BE) || replica
    (1), info = "QOIN/compute/outputs-transit/v1")``, the master key of the outputs archive as
    ``GET /jobs/{deal}/outputs`` sends it (each answer under a fresh file key, its random salt in
    the header); ``HKDF-SHA256(ikm = job key, salt = deal id (8, BE) || replica (1) || client
    nonce (16) || provider nonce (16), info = "QOIN/compute/log/v1")``, the key of one connection
    of ``WS /jobs/{deal}/logs`` (both nonces fresh for it).
Auth header
    ``X-Qoin-Auth: <signer address hex>.<unix seconds>.<public key hex>.<signature hex>`` where the
    signature is the signer's hybrid signature of ``tagged_hash("QOIN/compute/auth/v1", provider
    address (32) || deal id (8, BE) || seconds (8, BE))``. A provider takes it within
    :data:`AUTH_WINDOW_S` seconds of its own clock, for that provider and that deal only; the
    public key must hash to the signer's address. The header authorises reads of that deal's job
    (status, result, logs): it names no endpoint, so within its window it opens every read of the
    same deal on the same provider, which the signer may make anyway.
Key authorisation
    The same header format on ``POST /offer`` and ``POST /mediate`` (optional there), signing
    ``tagged_hash("QOIN/compute/offer-auth/v1" or "QOIN/compute/mediate-auth/v1", provider
    address (32) || bid or deal id (8, BE) || seconds (8, BE) || SHA3-256(sealed job key))``: the
    bid's (deal's) client vouches for this very sealed key, so a captured header cannot carry
    another key, nor be replayed against the other endpoint or as a read.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qoin.crypto import hybrid
from qoin.crypto.address import Address
from qoin.crypto.hashing import HASH_SIZE, sha3_256, tagged_hash
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey, HybridSignature
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError

KEM_KEY_SIZE: Final = 1184
"""Bytes of an ML-KEM-768 encapsulation key."""
KEM_CIPHERTEXT_SIZE: Final = 1088
"""Bytes of an ML-KEM-768 ciphertext."""
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
JOB_KEY_SIZE: Final = 32
SEALED_JOB_KEY_SIZE: Final = KEM_CIPHERTEXT_SIZE + NONCE_SIZE + JOB_KEY_SIZE + TAG_SIZE
"""Bytes of a sealed job key (1,148)."""
OUTPUT_MASTER_SIZE: Final = 32
INFO_JOB_KEY: Final = b"QOIN/compute/job-key/v1"
INFO_OUTPUTS: Final = b"QOIN/compute/outputs/v1"
INFO_OUTPUTS_TRANSIT: Final = b"QOIN/compute/outputs-transit/v1"
INFO_LOG: Final = b"QOIN/compute/log/v1"
TRANSIT_KEY_SIZE: Final = 32
LOG_NONCE_SIZE: Final = 16
"""Bytes of each side's nonce of a log connection."""
TAG_AUTH: Final = b"QOIN/compute/auth/v1"
KEY_AUTH_TAGS: Final = {
    "offer": b"QOIN/compute/offer-auth/v1",
    "mediate": b"QOIN/compute/mediate-auth/v1",
}
"""The tag of a key authorisation, by the endpoint it is for."""
AUTH_HEADER: Final = "x-qoin-auth"
"""The header's name (HTTP header names are case-insensitive)."""
AUTH_WINDOW_S: Final = 300
"""How far (seconds) an auth header's time may lie from the provider's clock, either way."""
MAX_AUTH_HEADER: Final = 16_000
"""Characters of an auth header, at most (a hybrid key and signature in hex take ~10,600)."""
MAX_ID: Final = 2**64 - 1
_HEX = re.compile(r"[0-9a-f]+")


class KeysError(QoinError):
    """A sealed job key that does not open (another KEM key, another job, damaged)."""


class AuthError(QoinError):
    """An auth header that is refused; :attr:`status` is 401 (malformed, expired, a bad signature:
    authenticate again) or 403 (a valid signer that may not see this job)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _check_job_hash(job_hash: bytes) -> None:
    if len(job_hash) != HASH_SIZE:
        raise KeysError(f"a job hash is {HASH_SIZE} bytes, got {len(job_hash)}")


def _wrapping_key(shared: bytes, job_hash: bytes) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), 32, salt=job_hash, info=INFO_JOB_KEY).derive(shared)
    return ChaCha20Poly1305(key)


def seal_job_key(kem_public: bytes, job_key: bytes, job_hash: bytes) -> bytes:
    """``job_key`` sealed to the ML-KEM-768 encapsulation key ``kem_public`` for the job
    ``job_hash`` (see the module docstring); :class:`KeysError` for keys of the wrong size."""
    if len(kem_public) != KEM_KEY_SIZE:
        raise KeysError(f"an ML-KEM-768 key is {KEM_KEY_SIZE} bytes, got {len(kem_public)}")
    if len(job_key) != JOB_KEY_SIZE:
        raise KeysError(f"a job key is {JOB_KEY_SIZE} bytes, got {len(job_key)}")
    _check_job_hash(job_hash)
    try:
        public = MLKEM768PublicKey.from_public_bytes(kem_public)
    except ValueError as exc:
        raise KeysError(f"not an ML-KEM-768 key: {exc}") from None
    shared, ciphertext = public.encapsulate()
    nonce = os.urandom(NONCE_SIZE)
    sealed = _wrapping_key(shared, job_hash).encrypt(nonce, job_key, job_hash)
    return ciphertext + nonce + sealed


def open_job_key(kem_private: MLKEM768PrivateKey, blob: bytes, job_hash: bytes) -> bytes:
    """The job key sealed in ``blob`` by :func:`seal_job_key`; :class:`KeysError` if it was not
    sealed to this KEM key for this job (or was changed)."""
    _check_job_hash(job_hash)
    if len(blob) != SEALED_JOB_KEY_SIZE:
        raise KeysError(
            f"a sealed job key is {SEALED_JOB_KEY_SIZE} bytes, got {len(blob)}: not one of ours"
        )
    ciphertext = blob[:KEM_CIPHERTEXT_SIZE]
    nonce = blob[KEM_CIPHERTEXT_SIZE : KEM_CIPHERTEXT_SIZE + NONCE_SIZE]
    sealed = blob[KEM_CIPHERTEXT_SIZE + NONCE_SIZE :]
    try:
        shared = kem_private.decapsulate(ciphertext)
        return _wrapping_key(shared, job_hash).decrypt(nonce, sealed, job_hash)
    except (ValueError, InvalidTag):
        raise KeysError(
            "the job key does not open with this provider's KEM key for this job: seal it to "
            "the KEM key of its ask (or mediator record) and the job's hash"
        ) from None


def _job_derived(
    job_key: bytes, deal_id: int, replica: int, info: bytes, extra: bytes = b""
) -> bytes:
    """``HKDF-SHA256(ikm = job key, salt = deal id (8, BE) || replica (1) || extra, info)``."""
    if len(job_key) != JOB_KEY_SIZE:
        raise KeysError(f"a job key is {JOB_KEY_SIZE} bytes, got {len(job_key)}")
    if not 0 <= deal_id <= MAX_ID or not 0 <= replica <= 255:
        raise KeysError(f"deal {deal_id} replica {replica} is out of range")
    salt = deal_id.to_bytes(8, "big") + bytes((replica,)) + extra
    return HKDF(hashes.SHA256(), OUTPUT_MASTER_SIZE, salt=salt, info=info).derive(job_key)


def output_master(job_key: bytes, deal_id: int, replica: int) -> bytes:
    """The storage master key of replica ``replica``'s outputs archive of deal ``deal_id``."""
    return _job_derived(job_key, deal_id, replica, INFO_OUTPUTS)


def outputs_transit_master(job_key: bytes, deal_id: int, replica: int) -> bytes:
    """The master key (:mod:`qoin.storage.crypt`'s format) under which replica ``replica``'s
    provider sends deal ``deal_id``'s outputs archive (``GET /jobs/{deal}/outputs``)."""
    return _job_derived(job_key, deal_id, replica, INFO_OUTPUTS_TRANSIT)


def log_key(
    job_key: bytes, deal_id: int, replica: int, client_nonce: bytes, provider_nonce: bytes
) -> bytes:
    """The key of one connection of replica ``replica``'s log stream of deal ``deal_id``
    (``WS /jobs/{deal}/logs``), from both sides' nonces of that connection."""
    if len(client_nonce) != LOG_NONCE_SIZE or len(provider_nonce) != LOG_NONCE_SIZE:
        raise KeysError(f"a log connection's nonces are {LOG_NONCE_SIZE} bytes each")
    return _job_derived(job_key, deal_id, replica, INFO_LOG, client_nonce + provider_nonce)


# -- auth ------------------------------------------------------------------------------------------


def auth_message(provider: Address, deal_id: int, seconds: int) -> bytes:
    """What an auth header signs."""
    if not 0 <= deal_id <= MAX_ID or not 0 <= seconds <= MAX_ID:
        raise AuthError(401, "deal id and time are unsigned 64-bit numbers")
    return tagged_hash(
        TAG_AUTH, provider.raw, deal_id.to_bytes(8, "big"), seconds.to_bytes(8, "big")
    )


def key_auth_message(
    purpose: str, provider: Address, number: int, seconds: int, sealed: bytes
) -> bytes:
    """What a key authorisation signs (``purpose`` "offer": ``number`` is the bid id;
    "mediate": the deal id)."""
    tag = KEY_AUTH_TAGS.get(purpose)
    if tag is None:
        raise AuthError(401, f"no key authorisation for {purpose!r}")
    if not 0 <= number <= MAX_ID or not 0 <= seconds <= MAX_ID:
        raise AuthError(401, "bid or deal id and time are unsigned 64-bit numbers")
    return tagged_hash(
        tag,
        provider.raw,
        number.to_bytes(8, "big"),
        seconds.to_bytes(8, "big"),
        sha3_256(sealed),
    )


def _header(keypair: HybridKeyPair, seconds: int, message: bytes) -> str:
    signature = hybrid.sign(keypair, message)
    return ".".join(
        (
            keypair.address.raw.hex(),
            str(seconds),
            keypair.public.encode().hex(),
            signature.encode().hex(),
        )
    )


def auth_header(
    keypair: HybridKeyPair, provider: Address, deal_id: int, now: float | None = None
) -> str:
    """The ``X-Qoin-Auth`` value with which ``keypair`` reads deal ``deal_id``'s job on
    ``provider`` (valid for :data:`AUTH_WINDOW_S` seconds around ``now``, default the clock)."""
    seconds = int(time.time() if now is None else now)
    return _header(keypair, seconds, auth_message(provider, deal_id, seconds))


def key_auth_header(
    keypair: HybridKeyPair,
    purpose: str,
    provider: Address,
    number: int,
    sealed: bytes,
    now: float | None = None,
) -> str:
    """The ``X-Qoin-Auth`` value of a ``POST /offer`` (``purpose`` "offer", ``number`` the bid)
    or ``POST /mediate`` ("mediate", the deal) carrying ``sealed``: the client vouches for that
    sealed key, which then replaces one kept before for the same bid or deal."""
    seconds = int(time.time() if now is None else now)
    return _header(keypair, seconds, key_auth_message(purpose, provider, number, seconds, sealed))


@dataclass(frozen=True)
class _Parsed:
    signer: Address
    seconds: int
    public: HybridPublicKey
    signature: HybridSignature


def _parse(header: str) -> _Parsed:
    if len(header) > MAX_AUTH_HEADER:
        raise AuthError(401, f"the auth header is longer than {MAX_AUTH_HEADER} characters")
    parts = header.strip().split(".")
    if len(parts) != 4:
        raise AuthError(401, "the auth header is ADDRESS.SECONDS.PUBLICKEY.SIGNATURE (hex)")
    address, seconds, public, signature = parts
    if not (
        len(address) == 2 * 32
        and all(_HEX.fullmatch(p) for p in (address, public, signature))
        and seconds.isdigit()
        and len(seconds) <= 20
        and len(public) % 2 == 0
        and len(signature) % 2 == 0
    ):
        raise AuthError(401, "the auth header is ADDRESS.SECONDS.PUBLICKEY.SIGNATURE (hex)")
    try:
        key = HybridPublicKey.decode(bytes.fromhex(public))
        sig = HybridSignature.decode(bytes.fromhex(signature))
    except DecodeError as exc:
        raise AuthError(401, f"the auth header's key or signature is malformed: {exc}") from None
    return _Parsed(Address(bytes.fromhex(address)), int(seconds), key, sig)


def _check(header: str, now: float | None, message: Callable[[int], bytes], what: str) -> Address:
    parsed = _parse(header)
    clock = time.time() if now is None else now
    if abs(parsed.seconds - clock) > AUTH_WINDOW_S:
        raise AuthError(
            401,
            f"the auth header's time {parsed.seconds} is more than {AUTH_WINDOW_S} s from the "
            f"provider's clock {int(clock)}: sign a fresh one (and check your clock)",
        )
    if parsed.public.address != parsed.signer:
        raise AuthError(401, "the auth header's public key does not hash to its signer's address")
    if not hybrid.is_valid(parsed.public, message(parsed.seconds), parsed.signature):
        raise AuthError(401, f"the auth header's signature does not sign {what}")
    return parsed.signer


def check_auth(
    header: str | None, provider: Address, deal_id: int, now: float | None = None
) -> Address:
    """The signer of a valid auth header for deal ``deal_id`` on ``provider``; :class:`AuthError`
    (401) if it is missing, malformed, outside the time window, or its key or signature does not
    check. Whether the signer may see the job (the deal's client or mediator) is the caller's
    check (403)."""
    if header is None:
        raise AuthError(
            401, "this endpoint needs an X-Qoin-Auth header signed by the deal's client or mediator"
        )
    return _check(
        header,
        now,
        lambda seconds: auth_message(provider, deal_id, seconds),
        f"deal {deal_id} on this provider",
    )


def check_key_auth(
    header: str,
    purpose: str,
    provider: Address,
    number: int,
    sealed: bytes,
    now: float | None = None,
) -> Address:
    """The signer of a valid key authorisation (:func:`key_auth_header`) of ``sealed`` for
    ``purpose`` and bid or deal ``number`` on ``provider``; :class:`AuthError` (401) as
    :func:`check_auth`. Whether the signer is the bid's (deal's) client is the caller's check."""
    return _check(
        header,
        now,
        lambda seconds: key_auth_message(purpose, provider, number, seconds, sealed),
        f"this job key for {purpose} {number} on this provider",
    )
