"""Keys of the compute market off chain (:mod:`qoin.compute.keys`): the job key sealed to an
ML-KEM-768 key for one job, the outputs' master key, the transit keys and what they seal
(:mod:`qoin.compute.transit`: the outputs archive and the log frames a provider sends), the signed
auth header; and the storage market's file keys that let a provider decrypt one input
(:mod:`qoin.storage.crypt`)."""

from __future__ import annotations

import io
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

from qoin.compute import keys, transit
from qoin.compute.jobspec import Input, unwrap_input_key, wrap_input_key
from qoin.crypto.hashing import sha3_256
from qoin.storage import crypt
from tests.keys import keypair_for

JOB = sha3_256(b"a job")
OTHER_JOB = sha3_256(b"another job")


def test_a_sealed_job_key_opens_only_with_its_kem_key_for_its_job() -> None:
    kem, stranger = MLKEM768PrivateKey.generate(), MLKEM768PrivateKey.generate()
    job_key = os.urandom(32)
    sealed = keys.seal_job_key(kem.public_key().public_bytes_raw(), job_key, JOB)
    assert len(sealed) == keys.SEALED_JOB_KEY_SIZE
    assert keys.open_job_key(kem, sealed, JOB) == job_key
    again = keys.seal_job_key(kem.public_key().public_bytes_raw(), job_key, JOB)
    assert again != sealed  # a fresh encapsulation and nonce each time
    for bad_key, blob, job in (
        (stranger, sealed, JOB),
        (kem, sealed, OTHER_JOB),
        (kem, sealed[:-1] + bytes([sealed[-1] ^ 1]), JOB),
        (kem, bytes([sealed[0] ^ 1]) + sealed[1:], JOB),
        (kem, sealed[:100], JOB),
    ):
        with pytest.raises(keys.KeysError):
            keys.open_job_key(bad_key, blob, job)
    with pytest.raises(keys.KeysError):
        keys.seal_job_key(b"short", job_key, JOB)
    with pytest.raises(keys.KeysError):
        keys.seal_job_key(kem.public_key().public_bytes_raw(), b"short", JOB)


def test_output_master_depends_on_key_deal_and_replica() -> None:
    job_key = os.urandom(32)
    base = keys.output_master(job_key, 7, 0)
    assert len(base) == 32 and keys.output_master(job_key, 7, 0) == base
    others = {
        keys.output_master(job_key, 7, 1),
        keys.output_master(job_key, 8, 0),
        keys.output_master(os.urandom(32), 7, 0),
    }
    assert base not in others and len(others) == 3
    with pytest.raises(keys.KeysError):
        keys.output_master(b"short", 1, 0)


def test_auth_header_checks_signer_provider_deal_and_time() -> None:
    client, provider, stranger = keypair_for(index=60), keypair_for(index=61), keypair_for(index=62)
    now = 1_700_000_000
    header = keys.auth_header(client, provider.address, 5, now)
    assert keys.check_auth(header, provider.address, 5, now + 10) == client.address
    refusals = [
        (None, provider, 5, now),
        (header, provider, 6, now),  # another deal
        (header, stranger, 5, now),  # another provider
        (header, provider, 5, now + keys.AUTH_WINDOW_S + 1),  # expired
        (header, provider, 5, now - keys.AUTH_WINDOW_S - 1),  # from the future
        ("not.a.header", provider, 5, now),
        ("zz" * 32 + ".1.00.00", provider, 5, now),
        ("x" * (keys.MAX_AUTH_HEADER + 1), provider, 5, now),
    ]
    for text, to, deal, when in refusals:
        with pytest.raises(keys.AuthError) as refused:
            keys.check_auth(text, to.address, deal, when)
        assert refused.value.status == 401
    address, seconds, public, signature = header.split(".")
    claimed = f"{stranger.address.raw.hex()}.{seconds}.{public}.{signature}"
    with pytest.raises(keys.AuthError, match="does not hash"):
        keys.check_auth(claimed, provider.address, 5, now)
    swapped = f"{address}.{int(seconds) + 1}.{public}.{signature}"
    with pytest.raises(keys.AuthError, match="signature"):
        keys.check_auth(swapped, provider.address, 5, now)


def test_file_key_decrypts_one_file_and_is_wrapped_under_the_job_key() -> None:
    master = os.urandom(32)
    data = os.urandom(200_000)
    blob = crypt.encrypt(data, master)
    salt = crypt.salt_of(blob[: crypt.HEADER_SIZE])
    file_key = crypt.file_key(master, salt)
    assert crypt.decrypt_with_file_key(blob, file_key) == data == crypt.decrypt(blob, master)
    other = crypt.encrypt(data, master)
    with pytest.raises(crypt.DecryptError):
        crypt.decrypt_with_file_key(other, file_key)  # another salt: another file key
    with pytest.raises(crypt.DecryptError):
        crypt.salt_of(b"not a header at all, not at all")
    job_key = os.urandom(32)
    cid = sha3_256(b"cid")
    item = Input(cid, "/inputs/x", wrap_input_key(job_key, cid, "/inputs/x", file_key))
    assert unwrap_input_key(job_key, item) == file_key


def test_key_auth_vouches_for_one_sealed_key_on_one_endpoint() -> None:
    """A client's key authorisation of ``POST /offer`` or ``/mediate`` signs the sealed key it
    carries: a captured header cannot carry another key, nor serve the other endpoint, another
    bid, another provider or a read."""
    client, provider, stranger = keypair_for(index=60), keypair_for(index=61), keypair_for(index=62)
    now = 1_700_000_000
    sealed, other = os.urandom(keys.SEALED_JOB_KEY_SIZE), os.urandom(keys.SEALED_JOB_KEY_SIZE)
    header = keys.key_auth_header(client, "offer", provider.address, 9, sealed, now)
    assert keys.check_key_auth(header, "offer", provider.address, 9, sealed, now) == client.address
    for purpose, to, number, blob in (
        ("offer", provider, 9, other),  # another key
        ("mediate", provider, 9, sealed),  # the other endpoint
        ("offer", provider, 10, sealed),  # another bid
        ("offer", stranger, 9, sealed),  # another provider
    ):
        with pytest.raises(keys.AuthError) as refused:
            keys.check_key_auth(header, purpose, to.address, number, blob, now)
        assert refused.value.status == 401
    with pytest.raises(keys.AuthError):
        keys.check_auth(header, provider.address, 9, now)  # not a read
    read = keys.auth_header(client, provider.address, 9, now)
    with pytest.raises(keys.AuthError):
        keys.check_key_auth(read, "offer", provider.address, 9, sealed, now)  # a read is not one
    with pytest.raises(keys.AuthError):
        keys.key_auth_header(client, "dispute", provider.address, 9, sealed, now)


# -- transit -------------------------------------------------------------------------------------

NONCES = (bytes(16), bytes(range(16)))


def test_transit_keys_are_derived_apart_from_the_stored_outputs_key() -> None:
    job_key = os.urandom(32)
    stored = keys.output_master(job_key, 7, 0)
    sent = keys.outputs_transit_master(job_key, 7, 0)
    log = keys.log_key(job_key, 7, 0, *NONCES)
    assert len({stored, sent, log}) == 3
    assert keys.outputs_transit_master(job_key, 7, 0) == sent
    others = {
        keys.outputs_transit_master(job_key, 7, 1),
        keys.outputs_transit_master(job_key, 8, 0),
        keys.log_key(job_key, 7, 1, *NONCES),
        keys.log_key(job_key, 7, 0, NONCES[1], NONCES[0]),  # another connection
        keys.log_key(os.urandom(32), 7, 0, *NONCES),
    }
    assert len(others) == 5 and not others & {stored, sent, log}
    with pytest.raises(keys.KeysError):
        keys.log_key(job_key, 7, 0, b"short", NONCES[1])
    with pytest.raises(keys.KeysError):
        keys.outputs_transit_master(job_key, 7, 256)


def sealed_archive(data: bytes, master: bytes) -> bytes:
    return b"".join(transit.seal_archive(io.BytesIO(data), len(data), master))


def opened(blob: bytes, master: bytes, piece: int = 7_777) -> bytes:
    opener = transit.ArchiveOpener(master)
    parts = [opener.feed(blob[i : i + piece]) for i in range(0, len(blob), piece)]
    return b"".join(parts) + opener.finish()


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        crypt.CHUNK - 1,
        crypt.CHUNK,
        crypt.CHUNK + 1,
        3 * crypt.CHUNK,
        transit.ARCHIVE_READ + 5,
    ],
)
def test_an_archive_is_sealed_in_the_storage_format_and_opens_as_it_streams(size: int) -> None:
    master = os.urandom(32)
    data = os.urandom(size)
    blob = sealed_archive(data, master)
    assert len(blob) == transit.sealed_archive_size(size)
    assert crypt.decrypt(blob, master) == data  # the storage market's format
    for piece in (1, 7_777, crypt.CHUNK + crypt.TAG_SIZE, len(blob) + 1):
        assert opened(blob, master, piece) == data
    assert sealed_archive(data, master) != blob  # a fresh salt each time


def test_a_changed_cut_or_foreign_archive_is_refused() -> None:
    master = os.urandom(32)
    data = os.urandom(2 * crypt.CHUNK + 100)
    blob = sealed_archive(data, master)
    sealed = crypt.CHUNK + crypt.TAG_SIZE
    cases = {
        "flipped in the salt": blob[:10] + bytes([blob[10] ^ 1]) + blob[11:],
        "flipped in a chunk": blob[:-50] + bytes([blob[-50] ^ 1]) + blob[-49:],
        "cut at a chunk": blob[: crypt.HEADER_SIZE + 2 * sealed],
        "cut inside a chunk": blob[:-1],
        "one byte more": blob + b"x",
        "chunks swapped": blob[: crypt.HEADER_SIZE]
        + blob[crypt.HEADER_SIZE + sealed : crypt.HEADER_SIZE + 2 * sealed]
        + blob[crypt.HEADER_SIZE : crypt.HEADER_SIZE + sealed]
        + blob[crypt.HEADER_SIZE + 2 * sealed :],
        "in clear": data,
        "empty": b"",
    }
    for what, bad in cases.items():
        with pytest.raises(transit.TransitError):
            opened(bad, master)
            pytest.fail(f"{what} opened")
    with pytest.raises(transit.TransitError, match="another job key"):
        opened(blob, os.urandom(32))
    with pytest.raises(transit.TransitError, match="early"):
        b"".join(transit.seal_archive(io.BytesIO(data[:-1]), len(data), master))


def log_pair() -> tuple[transit.LogSealer, transit.LogOpener]:
    key = keys.log_key(os.urandom(32), 3, 1, *NONCES)
    return transit.LogSealer(key), transit.LogOpener(key)


def test_log_frames_open_in_order_only() -> None:
    sealer, opener = log_pair()
    assert transit.parse_hello(transit.hello(NONCES[1])) == NONCES[1]
    first = sealer.data("stdout", 0, b"secret line\n")
    second = sealer.data("stderr", 12, b"warn")
    end = sealer.end(16, {"state": "revealed", "reason": "exited", "exit_code": 0, "detail": ""})
    assert b"secret" not in first
    assert opener.open(first) == transit.LogFrame("stdout", 0, b"secret line\n")
    assert opener.open(second) == transit.LogFrame("stderr", 12, b"warn")
    frame = opener.open(end)
    assert (frame.kind, frame.offset, frame.end) == (
        "end",
        16,
        {"state": "revealed", "reason": "exited", "exit_code": 0, "detail": ""},
    )
    sealer, opener = log_pair()
    frames = [sealer.data("stdout", i, b"x") for i in range(3)]
    refused: list[str | bytes] = [
        frames[1],  # the first one dropped
        frames[0][:-1] + bytes([frames[0][-1] ^ 1]),  # changed
        bytes([frames[0][0] ^ 1]) + frames[0][1:],
        frames[0][:5],  # too short
        b"x" * (transit.MAX_LOG_MESSAGE + 1),  # too long
        '{"stream": "stdout", "offset": 0, "data": ""}',  # in clear
    ]
    for message in refused:
        with pytest.raises(transit.TransitError):
            opener.open(message)
    assert opener.open(frames[0]).offset == 0  # a refused frame leaves the order as it was
    with pytest.raises(transit.TransitError):
        opener.open(frames[0])  # replayed
    _, stranger = log_pair()
    with pytest.raises(transit.TransitError, match="does not authenticate"):
        stranger.open(log_pair()[0].data("stdout", 0, b"x"))
    for hello in (b"QOINLOG1" + bytes(15), b"XOINLOG1" + bytes(16), "QOINLOG1" + "0" * 16):
        with pytest.raises(transit.TransitError):
            transit.parse_hello(hello)
    with pytest.raises(transit.TransitError):
        sealer.data("stdout", 0, bytes(transit.MAX_LOG_DATA + 1))
    long = sealer.end(0, {"state": "failed", "detail": "d" * 100_000})
    assert len(long) <= transit.MAX_LOG_MESSAGE
