"""Encrypted keystore files, in the spirit of Ethereum's keystore v3 (scrypt + AEAD).

A keystore is a JSON object::

    {
      "qoin_keystore": 1,
      "address": "qoin1…",                       # in clear, so verifying needs no password
      "suite": "falcon512+mldsa44",
      "public_key": "<hex: hybrid public key encoding>",
      "crypto": {
        "kdf": "scrypt", "kdfparams": {"n": 131072, "r": 8, "p": 1, "salt": "<hex 32>"},
        "cipher": "chacha20-poly1305", "nonce": "<hex 12>", "ciphertext": "<hex>"
      }
    }

The ciphertext is ChaCha20-Poly1305 over the encoded secret keys, under the 32-byte scrypt key, with
the associated data ``"QOIN/keystore/v1" ‖ public key encoding``: changing the public part of the file
makes decryption fail. Falcon keys cannot be re-derived from a seed with the libraries Qoin uses, so
*the keystore file is the backup*: lose it (or its password) and the account is lost.

Files are written with mode 0600, atomically, and never overwrite an existing file. Loading bounds the
file size and the scrypt parameters before doing any work, so a hostile file cannot exhaust memory.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from qoin.crypto.address import Address, AddressError
from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded

KEYSTORE_VERSION = 1
KEYSTORE_AAD_TAG = b"QOIN/keystore/v1"
DEFAULT_SCRYPT_LOG_N = 17
"""scrypt cost 2^17 with r = 8: about 128 MiB and a fraction of a second per unlock."""
MIN_SCRYPT_LOG_N = 14
MAX_SCRYPT_LOG_N = 20
SCRYPT_R = 8
SCRYPT_P = 1
MAX_KEYSTORE_FILE_SIZE = 64 * 1024


class KeystoreError(QoinError):
    """A keystore file that cannot be read, written or used."""


class WrongPassword(KeystoreError):
    """Decryption failed: the password is wrong or the file was altered."""


@dataclass(frozen=True)
class KeystoreFile:
    """The public part of a keystore plus its encrypted secret."""

    public: HybridPublicKey
    """The public keys (in clear)."""
    kdf_log_n: int
    """scrypt cost exponent."""
    salt: bytes
    """scrypt salt."""
    nonce: bytes
    """AEAD nonce."""
    ciphertext: bytes
    """Encrypted secret keys with the Poly1305 tag."""

    @property
    def address(self) -> Address:
        """The account address of the keys."""
        return self.public.address


def _derive_key(password: str, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(password.encode("utf-8"))


def _aad(public: HybridPublicKey) -> bytes:
    return KEYSTORE_AAD_TAG + public.encode()


def encrypt_keypair(
    keypair: HybridKeyPair, password: str, log_n: int = DEFAULT_SCRYPT_LOG_N
) -> KeystoreFile:
    """Encrypt ``keypair`` under ``password``."""
    if not MIN_SCRYPT_LOG_N <= log_n <= MAX_SCRYPT_LOG_N:
        raise KeystoreError(
            f"scrypt cost 2^{log_n} outside the allowed 2^{MIN_SCRYPT_LOG_N}..2^{MAX_SCRYPT_LOG_N}"
        )
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    key = _derive_key(password, salt, log_n)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, keypair.encode_secret(), _aad(keypair.public))
    return KeystoreFile(keypair.public, log_n, salt, nonce, ciphertext)


def decrypt_keypair(keystore: KeystoreFile, password: str) -> HybridKeyPair:
    """Decrypt the secret keys; :class:`WrongPassword` if the password does not open them."""
    key = _derive_key(password, keystore.salt, keystore.kdf_log_n)
    try:
        secret = ChaCha20Poly1305(key).decrypt(
            keystore.nonce, keystore.ciphertext, _aad(keystore.public)
        )
    except InvalidTag:
        raise WrongPassword("wrong password (or the keystore file was altered)") from None
    try:
        return HybridKeyPair.from_secret(keystore.public, secret)
    except DecodeError as exc:
        raise KeystoreError(f"keystore secret is malformed: {exc}") from None


def to_json(keystore: KeystoreFile) -> dict[str, Any]:
    """The JSON object written to disk."""
    return {
        "qoin_keystore": KEYSTORE_VERSION,
        "address": str(keystore.address),
        "suite": keystore.public.suite.name,
        "public_key": keystore.public.encode().hex(),
        "crypto": {
            "kdf": "scrypt",
            "kdfparams": {
                "n": 1 << keystore.kdf_log_n,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "salt": keystore.salt.hex(),
            },
            "cipher": "chacha20-poly1305",
            "nonce": keystore.nonce.hex(),
            "ciphertext": keystore.ciphertext.hex(),
        },
    }


def _field(obj: Any, key: str, kind: type) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise KeystoreError(f"keystore field {key!r} is missing or not a {kind.__name__}")
    return obj[key]


def _hex(obj: Any, key: str, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(_field(obj, key, str))
    except ValueError:
        raise KeystoreError(f"keystore field {key!r} is not hex") from None
    if size is not None and len(data) != size:
        raise KeystoreError(f"keystore field {key!r} must be {size} bytes")
    return data


def from_json(obj: Any) -> KeystoreFile:
    """Parse and check a keystore JSON object (public part consistent, parameters bounded)."""
    if _field(obj, "qoin_keystore", int) != KEYSTORE_VERSION:
        raise KeystoreError(f"unsupported keystore version {obj['qoin_keystore']!r}")
    try:
        public = HybridPublicKey.decode(_hex(obj, "public_key"))
        address = Address.from_text(_field(obj, "address", str))
    except (DecodeError, AddressError) as exc:
        raise KeystoreError(f"keystore public part is invalid: {exc}") from None
    if public.address != address:
        raise KeystoreError("keystore address does not match its public keys")
    if _field(obj, "suite", str) != public.suite.name:
        raise KeystoreError("keystore suite does not match its public keys")
    crypto = _field(obj, "crypto", dict)
    if crypto.get("kdf") != "scrypt" or crypto.get("cipher") != "chacha20-poly1305":
        raise KeystoreError("keystore must use scrypt and chacha20-poly1305")
    params = _field(crypto, "kdfparams", dict)
    n, r, p = (_field(params, k, int) for k in ("n", "r", "p"))
    log_n = n.bit_length() - 1
    if n != 1 << log_n or not MIN_SCRYPT_LOG_N <= log_n <= MAX_SCRYPT_LOG_N:
        raise KeystoreError(f"scrypt n={n} is not a power of two within the allowed range")
    if (r, p) != (SCRYPT_R, SCRYPT_P):
        raise KeystoreError(f"scrypt r={r}, p={p} unsupported (expected r=8, p=1)")
    return KeystoreFile(
        public=public,
        kdf_log_n=log_n,
        salt=_hex(params, "salt", 32),
        nonce=_hex(crypto, "nonce", 12),
        ciphertext=_hex(crypto, "ciphertext"),
    )


def load(path: Path) -> KeystoreFile:
    """Read a keystore file (no password needed for the public part)."""
    try:
        raw = read_bounded(path, MAX_KEYSTORE_FILE_SIZE, "keystore")
    except FileReadError as exc:
        raise KeystoreError(str(exc)) from None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeystoreError(f"{path} is not a JSON keystore") from None
    return from_json(obj)


def save(keystore: KeystoreFile, path: Path) -> None:
    """Write ``keystore`` to ``path`` with mode 0600; never overwrite an existing file."""
    data = (json.dumps(to_json(keystore), indent=2) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if the target exists, unlike rename(): an existing keystore is never replaced.
        os.link(tmp, path)
    except FileExistsError:
        raise KeystoreError(f"{path} already exists; refusing to overwrite a keystore") from None
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
