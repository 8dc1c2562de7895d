"""Client-side encryption of stored files (docs/spec/storage.md §3).

Master key
    ``HKDF-SHA256(ikm = keypair.encode_secret(), salt = none, info = "QOIN/storage/master/v1")``:
    the same keystore gives the same key on any machine.
File key
    ``HKDF-SHA256(ikm = master, salt = the file's 16 random bytes, info = "QOIN/storage/file/v1")``.
Layout
    ``header = b"QOINENC1" || salt (16) || chunk size (4, BE)`` then the plaintext in chunks of
    :data:`CHUNK` bytes (the last one shorter, and an empty file one empty chunk), each sealed with
    ChaCha20-Poly1305 under the file key: nonce ``4 zero bytes || chunk index (8, BE)``, AAD
    ``header || last-chunk flag (1 byte: 1 for the last chunk, else 0)``. The index in the nonce
    forbids reordering, the flag truncation at a chunk boundary, the tag any change.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qoin.crypto.hybrid import HybridKeyPair
from qoin.errors import QoinError

MAGIC: Final = b"QOINENC1"
"""The first bytes of every encrypted file."""
CHUNK: Final = 65_536
"""Plaintext bytes per sealed chunk."""
SALT_SIZE: Final = 16
"""Bytes of a file's random salt."""
KEY_SIZE: Final = 32
"""Bytes of the master and file keys."""
TAG_SIZE: Final = 16
"""Bytes of a chunk's Poly1305 tag."""
HEADER_SIZE: Final = len(MAGIC) + SALT_SIZE + 4
"""Bytes of the header."""

INFO_MASTER: Final = b"QOIN/storage/master/v1"
INFO_FILE: Final = b"QOIN/storage/file/v1"


class CryptError(QoinError):
    """Encryption inputs out of their bounds (key or salt size)."""


class DecryptError(CryptError):
    """Bytes that do not decrypt: another key, a damaged, truncated or reordered file."""


def master_key(keypair: HybridKeyPair) -> bytes:
    """The storage master key of a keystore's key pair."""
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=INFO_MASTER).derive(
        keypair.encode_secret()
    )


def file_key(master: bytes, salt: bytes) -> bytes:
    """The file key of the file whose header carries ``salt``, under ``master``. Whoever holds it
    decrypts that one file (:func:`decrypt_with_file_key`) and nothing else: a client hands it to
    a compute provider (docs/spec/compute.md §2) without giving away its master key."""
    if len(master) != KEY_SIZE:
        raise CryptError(f"master key has {len(master)} bytes, expected {KEY_SIZE}")
    if len(salt) != SALT_SIZE:
        raise CryptError(f"salt has {len(salt)} bytes, expected {SALT_SIZE}")
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=salt, info=INFO_FILE).derive(master)


def salt_of(header: bytes) -> bytes:
    """The salt in the header of an encrypted file (its first :data:`HEADER_SIZE` bytes or
    more); :class:`DecryptError` if they are not such a header."""
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise DecryptError("not an encrypted file: it does not start with a QOINENC1 header")
    return bytes(header[len(MAGIC) : len(MAGIC) + SALT_SIZE])


def _file_cipher(master: bytes, salt: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(file_key(master, salt))


def _chunks(size: int) -> int:
    """Sealed chunks of a ``size``-byte plaintext (at least one)."""
    return max(1, -(-size // CHUNK))


def _nonce(index: int) -> bytes:
    return bytes(4) + index.to_bytes(8, "big")


def encrypted_size(size: int) -> int:
    """Bytes of the encryption of a ``size``-byte plaintext."""
    if size < 0:
        raise CryptError(f"plaintext size {size} is negative")
    return HEADER_SIZE + size + TAG_SIZE * _chunks(size)


def encrypt(data: bytes, master: bytes, salt: bytes | None = None) -> bytes:
    """``data`` encrypted under ``master`` (a fresh random salt unless one is given)."""
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    if len(salt) != SALT_SIZE:
        raise CryptError(f"salt has {len(salt)} bytes, expected {SALT_SIZE}")
    cipher = _file_cipher(master, salt)
    header = MAGIC + salt + CHUNK.to_bytes(4, "big")
    count = _chunks(len(data))
    view = memoryview(data)
    parts = [header]
    for index in range(count):
        last = index == count - 1
        plain = view[index * CHUNK : (index + 1) * CHUNK]
        parts.append(cipher.encrypt(_nonce(index), plain, header + bytes((last,))))
    return b"".join(parts)


def decrypt(blob: bytes, master: bytes) -> bytes:
    """The plaintext of ``blob``; :class:`DecryptError` saying why it does not decrypt."""
    _check_header(blob)
    return _decrypt(blob, _file_cipher(master, salt_of(blob)))


def decrypt_with_file_key(blob: bytes, key: bytes) -> bytes:
    """The plaintext of ``blob`` decrypted with its file key (:func:`file_key`) instead of the
    master key; :class:`DecryptError` saying why it does not decrypt."""
    if len(key) != KEY_SIZE:
        raise CryptError(f"file key has {len(key)} bytes, expected {KEY_SIZE}")
    _check_header(blob)
    return _decrypt(blob, ChaCha20Poly1305(key))


def _check_header(blob: bytes) -> None:
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        raise DecryptError(f"not an encrypted file: {len(blob)} bytes is shorter than any")
    if not blob.startswith(MAGIC):
        raise DecryptError("not an encrypted file: it does not start with QOINENC1")
    chunk_size = int.from_bytes(blob[HEADER_SIZE - 4 : HEADER_SIZE], "big")
    if chunk_size != CHUNK:
        raise DecryptError(f"bad header: chunk size {chunk_size}, expected {CHUNK}")


def _decrypt(blob: bytes, cipher: ChaCha20Poly1305) -> bytes:
    header = bytes(blob[:HEADER_SIZE])
    body = len(blob) - HEADER_SIZE
    sealed = CHUNK + TAG_SIZE
    count = max(1, -(-body // sealed))
    if body - (count - 1) * sealed < TAG_SIZE:
        raise DecryptError("the encrypted file is truncated (its last chunk has no tag)")
    view = memoryview(blob)[HEADER_SIZE:]
    parts = []
    for index in range(count):
        last = index == count - 1
        try:
            parts.append(
                cipher.decrypt(
                    _nonce(index),
                    view[index * sealed : (index + 1) * sealed],
                    header + bytes((last,)),
                )
            )
        except InvalidTag:
            if index == 0:
                raise DecryptError(
                    "not encrypted with this keystore's key (or its first chunk is damaged)"
                ) from None
            raise DecryptError(
                f"chunk {index} of {count} does not authenticate: the file is damaged, "
                "truncated or reordered"
            ) from None
    return b"".join(parts)
