"""Hybrid multi-signatures: every component scheme of a suite signs, and every one must verify.

The message each component signs is domain-separated and bound to the signer::

    signing_message = len(tag) ‖ "QOIN/hybrid-signature/v1" ‖ suite_id (u16, big-endian)
                      ‖ address (32 bytes) ‖ message

where ``address = SHA3-256(suite_id ‖ pk_1 ‖ … ‖ pk_k)`` commits to the suite and to *all* component
public keys. Hence a component cannot be dropped (the suite says how many there are), swapped in from
another key's signature (it signed another address), nor re-labelled under another suite (it signed
another suite id).

Encodings (fixed sizes per suite, so no length fields; see :mod:`qoin.crypto.suites`)::

    public key  = suite_id (u16) ‖ pk_1 ‖ … ‖ pk_k
    signature   = suite_id (u16) ‖ sig_1 ‖ … ‖ sig_k
    secret key  = suite_id (u16) ‖ sk_1 ‖ … ‖ sk_k
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from qoin.crypto.address import Address
from qoin.crypto.hashing import TAG_HYBRID_SIGNATURE, sha3_256
from qoin.crypto.suites import DEFAULT_SUITE, Suite, UnknownSuite, suite_by_id
from qoin.encoding.codec import DecodeError, Reader, UnknownVersion
from qoin.errors import QoinError

_SIGNING_PREFIX = bytes((len(TAG_HYBRID_SIGNATURE),)) + TAG_HYBRID_SIGNATURE


class SignatureError(QoinError):
    """A hybrid signature does not verify."""


class SuiteMismatch(SignatureError):
    """The signature names a different suite than the public key."""


class ComponentInvalid(SignatureError):
    """One component signature does not verify over the hybrid signing message."""


class AddressMismatch(SignatureError):
    """Public keys that do not hash to the address they are presented for."""


class MalformedKey(DecodeError):
    """Bytes that are not the canonical encoding of a hybrid key."""


class MalformedSignature(DecodeError):
    """Bytes that are not the canonical encoding of a hybrid signature."""


def _read_suite(reader: Reader, what: str) -> Suite:
    try:
        return suite_by_id(reader.u16())
    except UnknownSuite as exc:
        raise UnknownVersion(f"{what}: {exc}") from None


def _read_parts(reader: Reader, sizes: tuple[int, ...]) -> tuple[bytes, ...]:
    return tuple([reader.fixed(size) for size in sizes])


@dataclass(frozen=True)
class HybridPublicKey:
    """The public keys of every component of a suite."""

    suite: Suite
    """The suite the keys belong to."""
    keys: tuple[bytes, ...]
    """One public key per component, in suite order."""

    def __post_init__(self) -> None:
        sizes = self.suite.public_key_sizes
        if tuple(map(len, self.keys)) != sizes:
            raise MalformedKey(f"{self.suite.name} public keys must have sizes {sizes}")

    def encode(self) -> bytes:
        """Canonical encoding: suite id then each component key."""
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding, computed once."""
        return self.suite.suite_id.to_bytes(2, "big") + b"".join(self.keys)

    @cached_property
    def address(self) -> Address:
        """SHA3-256 of the canonical encoding (suite id ‖ public keys)."""
        return Address(sha3_256(self.encoded))

    @classmethod
    def read(cls, reader: Reader) -> HybridPublicKey:
        """Decode from a reader (used inside larger objects)."""
        suite = _read_suite(reader, "public key")
        return cls(suite, _read_parts(reader, suite.public_key_sizes))

    @classmethod
    def decode(cls, data: bytes) -> HybridPublicKey:
        """Decode a standalone public key, rejecting truncated or over-long input."""
        reader = Reader(data)
        key = cls.read(reader)
        reader.finish()
        return key


@dataclass(frozen=True)
class HybridSignature:
    """One signature per component of a suite, all over the same hybrid signing message."""

    suite: Suite
    """The suite the signature claims."""
    parts: tuple[bytes, ...]
    """One signature per component, in suite order."""

    def __post_init__(self) -> None:
        sizes = self.suite.signature_sizes
        if tuple(map(len, self.parts)) != sizes:
            raise MalformedSignature(f"{self.suite.name} signatures must have sizes {sizes}")

    def encode(self) -> bytes:
        """Canonical encoding: suite id then each component signature."""
        return self.suite.suite_id.to_bytes(2, "big") + b"".join(self.parts)

    @classmethod
    def read(cls, reader: Reader) -> HybridSignature:
        """Decode from a reader (used inside larger objects)."""
        suite = _read_suite(reader, "signature")
        return cls(suite, _read_parts(reader, suite.signature_sizes))

    @classmethod
    def decode(cls, data: bytes) -> HybridSignature:
        """Decode a standalone signature, rejecting truncated or over-long input."""
        reader = Reader(data)
        signature = cls.read(reader)
        reader.finish()
        return signature


@dataclass(frozen=True)
class HybridKeyPair:
    """A suite's secret keys together with the matching public keys."""

    public: HybridPublicKey
    """The public half (also carries the suite and the address)."""
    secrets: tuple[bytes, ...]
    """One secret key per component, in suite order."""

    def __post_init__(self) -> None:
        sizes = [c.secret_key_size for c in self.suite.components]
        if [len(s) for s in self.secrets] != sizes:
            raise MalformedKey(f"{self.suite.name} secret keys must have sizes {sizes}")

    def __repr__(self) -> str:
        return f"HybridKeyPair(suite={self.suite.name}, address={self.address})"

    @property
    def suite(self) -> Suite:
        """The key pair's suite."""
        return self.public.suite

    @property
    def address(self) -> Address:
        """The address of the public keys."""
        return self.public.address

    def encode_secret(self) -> bytes:
        """Canonical encoding of the secret half: suite id then each component secret key."""
        return self.suite.suite_id.to_bytes(2, "big") + b"".join(self.secrets)

    @classmethod
    def from_secret(cls, public: HybridPublicKey, secret: bytes) -> HybridKeyPair:
        """Rebuild a key pair from its public keys and an encoded secret half."""
        reader = Reader(secret)
        suite = _read_suite(reader, "secret key")
        if suite != public.suite:
            raise MalformedKey(f"secret key is {suite.name}, public key is {public.suite.name}")
        parts = _read_parts(reader, tuple(c.secret_key_size for c in suite.components))
        reader.finish()
        return cls(public, parts)


def generate_keypair(suite: Suite = DEFAULT_SUITE) -> HybridKeyPair:
    """A fresh key pair of every component of ``suite`` (keys come from the OS CSPRNG)."""
    pairs = [component.generate() for component in suite.components]
    public = HybridPublicKey(suite, tuple(pk for pk, _ in pairs))
    return HybridKeyPair(public, tuple(sk for _, sk in pairs))


def signing_message(public: HybridPublicKey, message: bytes) -> bytes:
    """The domain-separated message every component signs (see the module docstring)."""
    return b"".join(
        (_SIGNING_PREFIX, public.encoded[:2], public.address.raw, message),
    )


def sign(keypair: HybridKeyPair, message: bytes) -> HybridSignature:
    """Sign ``message`` with every component of the key pair's suite."""
    bound = signing_message(keypair.public, message)
    parts = tuple(
        component.sign(secret, bound)
        for component, secret in zip(keypair.suite.components, keypair.secrets, strict=True)
    )
    return HybridSignature(keypair.suite, parts)


def verify(public: HybridPublicKey, message: bytes, signature: HybridSignature) -> None:
    """Check that *every* component of ``signature`` verifies; raise a :class:`SignatureError`.

    The suite of the signature must be the suite of the key: a signature presented under another
    suite is rejected before any component is checked.
    """
    if signature.suite != public.suite:
        raise SuiteMismatch(
            f"signature is {signature.suite.name} but the key is {public.suite.name}"
        )
    bound = signing_message(public, message)
    for index, (component, key, part) in enumerate(
        zip(public.suite.components, public.keys, signature.parts, strict=True)
    ):
        if not component.verify(key, bound, part):
            raise ComponentInvalid(
                f"component {index} ({component.name}) of the {public.suite.name} signature "
                "does not verify"
            )


def is_valid(public: HybridPublicKey, message: bytes, signature: HybridSignature) -> bool:
    """``True`` when :func:`verify` would accept; for hot paths that only need a yes or no."""
    try:
        verify(public, message, signature)
    except SignatureError:
        return False
    return True


def verify_for_address(
    address: Address, public: HybridPublicKey, message: bytes, signature: HybridSignature
) -> None:
    """Verify a signature by keys that must belong to ``address``."""
    if public.address != address:
        raise AddressMismatch(f"public keys belong to {public.address}, not to {address}")
    verify(public, message, signature)
