"""The single signature schemes that hybrid suites combine.

Each scheme is a thin, uniform wrapper over a standard library implementation — never a hand-written
primitive:

* ML-DSA (FIPS 204) from ``cryptography`` (OpenSSL);
* Falcon (padded, fixed-size signatures) and SLH-DSA-SHA2-128s (FIPS 205) from ``pqcrypto`` (PQClean).

Falcon is used in its *padded* form so that every signature of a scheme has one fixed size; that keeps
the hybrid signature encoding canonical without a length field (PQClean rejects non-zero padding).
All three libraries release the GIL while they work, so threads verify in parallel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature as _LibInvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from pqcrypto.sign import falcon_padded_512, falcon_padded_1024, sphincs_sha2_128s_simple


@dataclass(frozen=True)
class SignatureScheme:
    """One post-quantum signature scheme with fixed key and signature sizes."""

    name: str
    """Stable lower-case name used in suite names (``falcon512``, ``mldsa44``, ...)."""
    public_key_size: int
    """Size of an encoded public key in bytes."""
    secret_key_size: int
    """Size of an encoded secret key in bytes (for ML-DSA: the 32-byte seed)."""
    signature_size: int
    """Size of every signature in bytes."""
    generate: Callable[[], tuple[bytes, bytes]]
    """Return a fresh ``(public_key, secret_key)`` pair."""
    sign: Callable[[bytes, bytes], bytes]
    """``sign(secret_key, message) -> signature``."""
    verify: Callable[[bytes, bytes, bytes], bool]
    """``verify(public_key, message, signature) -> bool``; sizes are checked by the caller."""


# -- ML-DSA (cryptography) ------------------------------------------------------------------------

_MLDSAPrivate = type[mldsa.MLDSA44PrivateKey] | type[mldsa.MLDSA87PrivateKey]
_MLDSAPublic = type[mldsa.MLDSA44PublicKey] | type[mldsa.MLDSA87PublicKey]


def _mldsa(
    name: str, private_cls: _MLDSAPrivate, public_cls: _MLDSAPublic, pk: int, sig: int
) -> SignatureScheme:
    @lru_cache(maxsize=4096)
    def load_public(public_key: bytes) -> mldsa.MLDSA44PublicKey | mldsa.MLDSA87PublicKey:
        # Parsing an ML-DSA public key costs about as much as 5 % of a verify: keep recent ones.
        return public_cls.from_public_bytes(public_key)

    @lru_cache(maxsize=64)
    def load_private(secret_key: bytes) -> mldsa.MLDSA44PrivateKey | mldsa.MLDSA87PrivateKey:
        return private_cls.from_seed_bytes(secret_key)

    def generate() -> tuple[bytes, bytes]:
        key = private_cls.generate()
        return key.public_key().public_bytes_raw(), key.private_bytes_raw()

    def sign(secret_key: bytes, message: bytes) -> bytes:
        return load_private(secret_key).sign(message)

    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            load_public(public_key).verify(signature, message)
        except (_LibInvalidSignature, ValueError):
            return False
        return True

    return SignatureScheme(name, pk, 32, sig, generate, sign, verify)


# -- Falcon and SLH-DSA (pqcrypto / PQClean) -------------------------------------------------------


def _pqclean(name: str, module: object) -> SignatureScheme:
    generate_keypair: Callable[[], tuple[bytes, bytes]] = getattr(module, "generate_keypair")  # noqa: B009
    raw_sign: Callable[[bytes, bytes], bytes] = getattr(module, "sign")  # noqa: B009
    raw_verify: Callable[[bytes, bytes, bytes], bool] = getattr(module, "verify")  # noqa: B009

    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            return bool(raw_verify(public_key, message, signature))
        except ValueError:
            return False

    return SignatureScheme(
        name,
        int(getattr(module, "PUBLIC_KEY_SIZE")),  # noqa: B009
        int(getattr(module, "SECRET_KEY_SIZE")),  # noqa: B009
        int(getattr(module, "SIGNATURE_SIZE")),  # noqa: B009
        generate_keypair,
        raw_sign,
        verify,
    )


FALCON512 = _pqclean("falcon512", falcon_padded_512)
FALCON1024 = _pqclean("falcon1024", falcon_padded_1024)
MLDSA44 = _mldsa("mldsa44", mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 1312, 2420)
MLDSA87 = _mldsa("mldsa87", mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 2592, 4627)
SLHDSA_SHA2_128S = _pqclean("slhdsa-sha2-128s", sphincs_sha2_128s_simple)

SCHEMES: dict[str, SignatureScheme] = {
    scheme.name: scheme for scheme in (FALCON512, FALCON1024, MLDSA44, MLDSA87, SLHDSA_SHA2_128S)
}
"""Every scheme by name."""
