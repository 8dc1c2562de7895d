"""The example contracts of examples/contracts: their committed builds match their sources, and the
AssemblyScript notary works through ``Machine.call`` with a real hybrid key pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from qoin.crypto.hashing import sha3_256
from qoin.crypto.hybrid import sign
from qoin.execution.abi import decode_value, encode_args
from qoin.execution.account import storage_key
from qoin.execution.receipt import CallStatus
from tests.keys import keypair_for
from tests.test_wasm import BOB, ENV, call, deploy, machine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "contracts"
NOTARY_DIR = EXAMPLES / "notary"
NOTARY = (NOTARY_DIR / "notary.wasm").read_bytes()


@pytest.mark.parametrize("name", ["counter", "token", "ai_oracle"])
def test_committed_wat_builds_match_their_sources(name: str) -> None:
    built = bytes(wasmtime.wat2wasm((EXAMPLES / f"{name}.wat").read_text()))
    assert (EXAMPLES / f"{name}.wasm").read_bytes() == built, "run `make contracts`"


def test_assemblyscript_toolchain_is_pinned() -> None:
    package = json.loads((NOTARY_DIR / "package.json").read_text())
    version = package["devDependencies"]["assemblyscript"]
    assert version[0].isdigit(), "the assemblyscript version must be exact"
    lock = json.loads((NOTARY_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/assemblyscript"]["version"] == version
    build = package["scripts"]["build"]
    for flag in ("--optimize", "--noAssert", "--runtime stub", "--outFile notary.wasm"):
        assert flag in build
    assert "--sourceMap" not in build and "--debug" not in build
    assert "node_modules/" in (NOTARY_DIR / ".gitignore").read_text().split()


def test_notary_records_the_first_notarization() -> None:
    m = machine()
    notary = deploy(m, NOTARY)
    digest = sha3_256(b"a document")
    first = call(m, notary, "notarize", encode_args([digest]), caller=BOB)
    assert first.status is CallStatus.SUCCESS, first.reason
    event = m.events[-1]
    assert event.emitter == notary
    assert event.topics == (sha3_256(b"Notarized"), digest, BOB.raw)
    assert event.data == ENV.height.to_bytes(8, "big")
    record = m.state.get(storage_key(notary, b"n" + digest))
    assert record == BOB.raw + ENV.height.to_bytes(8, "big")

    again = call(m, notary, "notarize", encode_args([digest]))
    assert (again.status, again.reason) == (CallStatus.REVERTED, "already notarized")
    owner = call(m, notary, "owner_of", encode_args([digest]))
    assert owner.status is CallStatus.SUCCESS, owner.reason
    assert decode_value(owner.return_data) == (BOB, ENV.height)

    unknown = call(m, notary, "owner_of", encode_args([sha3_256(b"other")]))
    assert (unknown.status, unknown.reason) == (CallStatus.REVERTED, "not notarized")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (encode_args([b"short"]), "a digest is 32 bytes"),
        (encode_args([]), "wrong number of arguments"),
        (encode_args(["a string"]), "expected a bytes argument"),
        (encode_args([bytes(32)]) + b"\x00", "trailing argument bytes"),
        (encode_args([bytes(32)])[:-1], "truncated arguments"),
    ],
)
def test_notary_rejects_bad_arguments(args: bytes, reason: str) -> None:
    m = machine()
    notary = deploy(m, NOTARY)
    result = call(m, notary, "notarize", args)
    assert (result.status, result.reason) == (CallStatus.REVERTED, reason)


def test_notary_attest_checks_a_real_signature() -> None:
    keypair = keypair_for(index=1)
    message = b"I wrote this"
    public = keypair.public.encode()
    signature = sign(keypair, message).encode()
    m = machine()
    notary = deploy(m, NOTARY)

    valid = call(m, notary, "attest", encode_args([public, message, signature]), gas=10**6)
    assert valid.status is CallStatus.SUCCESS, valid.reason
    assert decode_value(valid.return_data) is True
    event = m.events[-1]
    assert event.topics == (sha3_256(b"Attested"), sha3_256(message), keypair.address.raw)
    key = b"a" + sha3_256(message) + keypair.address.raw
    assert m.state.get(storage_key(notary, key)) == ENV.height.to_bytes(8, "big")

    events = len(m.events)
    for args in (
        [public, message + b"?", signature],
        [public, message, signature[:-1]],
        [b"not a key", message, signature],
    ):
        invalid = call(m, notary, "attest", encode_args(args), gas=10**6)
        assert invalid.status is CallStatus.SUCCESS, invalid.reason
        assert decode_value(invalid.return_data) is False
    assert len(m.events) == events
