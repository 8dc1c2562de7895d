"""Client-side encryption (docs/spec/storage.md §3).

* hypothesis: encrypt then decrypt gives the plaintext back (empty, one byte, chunk boundaries,
  several chunks), the size is ``encrypted_size``;
* the layout is the spec's: header, HKDF keys, nonces, AAD with the last-chunk flag (one chunk is
  opened here with ``cryptography`` directly);
* the same keystore on "another machine" (saved, loaded and decrypted into a fresh key pair) gives
  the same master key and decrypts; another key pair does not ("not encrypted with this keystore's
  key");
* truncation (inside a chunk and at a chunk boundary), dropping, reordering or changing a chunk, a
  changed header or salt: each is refused with :class:`DecryptError`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.crypto import keystore
from qoin.crypto.hybrid import HybridKeyPair
from qoin.storage.crypt import (
    CHUNK,
    HEADER_SIZE,
    MAGIC,
    CryptError,
    DecryptError,
    decrypt,
    encrypt,
    encrypted_size,
    master_key,
)
from tests.keys import keypair_for

SEALED = CHUNK + 16
SIZES = st.one_of(
    st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7]),
    st.integers(0, 4 * CHUNK),
)


def content(size: int) -> bytes:
    return hashlib.shake_256(size.to_bytes(8, "big")).digest(size)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SIZES, st.binary(min_size=32, max_size=32))
def test_round_trip(size: int, master: bytes) -> None:
    plain = content(size)
    blob = encrypt(plain, master)
    assert len(blob) == encrypted_size(size)
    assert blob.startswith(MAGIC)
    assert decrypt(blob, master) == plain
    assert encrypt(plain, master) != blob  # a fresh salt each time


def test_layout_is_the_spec() -> None:
    master = bytes(range(32))
    salt = bytes(range(100, 116))
    plain = content(CHUNK + 10)
    blob = encrypt(plain, master, salt)
    header = b"QOINENC1" + salt + CHUNK.to_bytes(4, "big")
    assert blob[:HEADER_SIZE] == header
    key = HKDF(hashes.SHA256(), 32, salt=salt, info=b"QOIN/storage/file/v1").derive(master)
    cipher = ChaCha20Poly1305(key)
    first = blob[HEADER_SIZE : HEADER_SIZE + SEALED]
    last = blob[HEADER_SIZE + SEALED :]
    assert cipher.decrypt(bytes(4) + (0).to_bytes(8, "big"), first, header + b"\0") == plain[:CHUNK]
    assert cipher.decrypt(bytes(4) + (1).to_bytes(8, "big"), last, header + b"\1") == plain[CHUNK:]
    assert encrypted_size(0) == HEADER_SIZE + 16
    assert encrypted_size(CHUNK) == HEADER_SIZE + CHUNK + 16
    assert encrypted_size(CHUNK + 1) == HEADER_SIZE + CHUNK + 1 + 32


def test_same_keystore_on_another_machine(tmp_path: Path) -> None:
    keypair = keypair_for(index=0)
    master = master_key(keypair)
    assert master == HKDF(hashes.SHA256(), 32, salt=None, info=b"QOIN/storage/master/v1").derive(
        keypair.encode_secret()
    )
    blob = encrypt(content(100_000), master)
    # another machine: the keystore file saved, read back and decrypted into a fresh key pair
    path = tmp_path / "other-machine" / "key.json"
    keystore.save(keystore.encrypt_keypair(keypair, "pw", log_n=keystore.MIN_SCRYPT_LOG_N), path)
    restored = keystore.decrypt_keypair(keystore.load(path), "pw")
    assert restored is not keypair
    assert decrypt(blob, master_key(restored)) == content(100_000)
    fresh = HybridKeyPair.from_secret(keypair.public, keypair.encode_secret())
    assert master_key(fresh) == master
    # another keystore's key does not open it
    with pytest.raises(DecryptError, match="not encrypted with this keystore's key"):
        decrypt(blob, master_key(keypair_for(index=1)))


def test_tampering_is_refused() -> None:
    master = bytes(32)
    plain = content(3 * CHUNK + 100)
    blob = encrypt(plain, master)
    chunks = [blob[HEADER_SIZE + i * SEALED : HEADER_SIZE + (i + 1) * SEALED] for i in range(4)]
    header = blob[:HEADER_SIZE]
    assert decrypt(header + b"".join(chunks), master) == plain
    cases = {
        "truncated inside the last chunk": blob[:-1],
        "truncated at a chunk boundary": header + b"".join(chunks[:3]),
        "truncated to its first chunk": header + chunks[0],
        "a middle chunk dropped": header + chunks[0] + chunks[2] + chunks[3],
        "two chunks swapped": header + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "a byte changed": blob[:-50] + bytes((blob[-50] ^ 1,)) + blob[-49:],
        "a chunk appended": blob + chunks[1],
        "the salt changed": blob[:10] + bytes((blob[10] ^ 1,)) + blob[11:],
    }
    for what, damaged in cases.items():
        try:
            decrypt(damaged, master)
        except DecryptError as exc:
            assert re.search("damaged|not encrypted|truncated", str(exc)), what
            continue
        pytest.fail(f"{what}: decrypted")
    with pytest.raises(DecryptError, match="chunk 2 of 4 does not authenticate"):
        decrypt(header + chunks[0] + chunks[1] + chunks[3] + chunks[2], master)
    with pytest.raises(DecryptError, match="does not start with QOINENC1"):
        decrypt(b"QOINENC2" + blob[8:], master)
    with pytest.raises(DecryptError, match="bad header: chunk size"):
        decrypt(blob[: HEADER_SIZE - 1] + b"\1" + blob[HEADER_SIZE:], master)
    with pytest.raises(DecryptError, match="shorter than any"):
        decrypt(header + bytes(15), master)
    with pytest.raises(DecryptError, match="truncated"):
        decrypt(header + chunks[0] + bytes(10), master)


def test_bad_key_and_salt_sizes() -> None:
    with pytest.raises(CryptError, match="master key has 31 bytes"):
        encrypt(b"x", bytes(31))
    with pytest.raises(CryptError, match="salt has 15 bytes"):
        encrypt(b"x", bytes(32), bytes(15))
    with pytest.raises(CryptError, match="master key has 16 bytes"):
        decrypt(encrypt(b"x", bytes(32)), bytes(16))
