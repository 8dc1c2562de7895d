"""Keystores and the ``qoin keys`` commands, run as real processes."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from qoin.crypto import keystore
from qoin.crypto.address import Address
from tests.cliutil import run_qoin
from tests.keys import keypair_for

FAST = ["--scrypt-log-n", "14"]


def qoin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_qoin(*args, env=env)


def test_encrypt_decrypt_roundtrip(tmp_path: Path) -> None:
    keypair = keypair_for()
    store = keystore.encrypt_keypair(keypair, "correct horse", log_n=14)
    path = tmp_path / "k.json"
    keystore.save(store, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keystore.load(path)
    assert loaded.address == keypair.address
    assert keystore.decrypt_keypair(loaded, "correct horse") == keypair
    with pytest.raises(keystore.WrongPassword):
        keystore.decrypt_keypair(loaded, "wrong")
    with pytest.raises(keystore.KeystoreError, match="already exists"):
        keystore.save(store, path)


def test_tampered_public_part_detected(tmp_path: Path) -> None:
    keypair, other = keypair_for(index=0), keypair_for(index=1)
    obj = keystore.to_json(keystore.encrypt_keypair(keypair, "pw", log_n=14))
    obj["public_key"] = other.public.encode().hex()
    with pytest.raises(keystore.KeystoreError, match="address does not match"):
        keystore.from_json(obj)
    obj["address"] = str(other.address)
    with pytest.raises(keystore.WrongPassword):
        keystore.decrypt_keypair(keystore.from_json(obj), "pw")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("crypto", "kdfparams", "n"), 2**30, "power of two"),
        (("crypto", "kdfparams", "n"), 3, "power of two"),
        (("crypto", "kdfparams", "r"), 1024, "unsupported"),
        (("crypto", "nonce"), "zz", "not hex"),
        (("qoin_keystore",), 9, "unsupported keystore version"),
        (("crypto", "kdf"), "pbkdf2", "scrypt"),
    ],
)
def test_hostile_keystore_rejected(path: tuple[str, ...], value: object, message: str) -> None:
    obj = keystore.to_json(keystore.encrypt_keypair(keypair_for(), "pw", log_n=14))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(keystore.KeystoreError, match=message):
        keystore.from_json(obj)


@pytest.mark.slow
def test_cli_new_sign_verify(tmp_path: Path) -> None:
    password = tmp_path / "pw.txt"
    password.write_text("s3cret\n")
    key = tmp_path / "alice.json"
    created = qoin("keys", "new", "--out", str(key), "--password-file", str(password), *FAST)
    assert created.returncode == 0, created.stderr
    address = created.stdout.strip()
    Address.from_text(address)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert json.loads(key.read_text())["address"] == address

    shown = qoin("keys", "show", str(key), "--json", "--pubkeys-out", str(tmp_path / "pk.bin"))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["address"] == address

    message = tmp_path / "msg.txt"
    message.write_bytes(b"hello qoin")
    sig = tmp_path / "msg.sig"
    signed = qoin(
        "keys",
        "sign",
        "--key",
        str(key),
        "--message-file",
        str(message),
        "--out",
        str(sig),
        env={"QOIN_PASSWORD": "s3cret"},
    )
    assert signed.returncode == 0, signed.stderr

    ok = qoin(
        "keys", "verify", "--key", str(key), "--message-file", str(message), "--signature", str(sig)
    )
    assert ok.returncode == 0, ok.stderr
    assert address in ok.stdout

    by_address = qoin(
        "keys",
        "verify",
        "--address",
        address,
        "--pubkeys",
        str(tmp_path / "pk.bin"),
        "--message-file",
        str(message),
        "--signature",
        str(sig),
    )
    assert by_address.returncode == 0, by_address.stderr

    message.write_bytes(b"hello qoin!")
    bad = qoin(
        "keys", "verify", "--key", str(key), "--message-file", str(message), "--signature", str(sig)
    )
    assert bad.returncode == 1
    assert "INVALID" in bad.stderr
    assert "Traceback" not in bad.stderr

    other = keypair_for(index=1)
    wrong_address = qoin(
        "keys",
        "verify",
        "--address",
        str(other.address),
        "--pubkeys",
        str(tmp_path / "pk.bin"),
        "--message-file",
        str(message),
        "--signature",
        str(sig),
    )
    assert wrong_address.returncode == 1
    assert "belong to" in wrong_address.stderr


def test_cli_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / "k.json"
    made = qoin("keys", "new", "--out", str(key), *FAST, env={"QOIN_PASSWORD": "right"})
    assert made.returncode == 0, made.stderr
    message = tmp_path / "m"
    message.write_bytes(b"x")
    result = qoin(
        "keys",
        "sign",
        "--key",
        str(key),
        "--message-file",
        str(message),
        "--out",
        str(tmp_path / "s"),
        env={"QOIN_PASSWORD": "wrong"},
    )
    assert result.returncode == 1
    assert "wrong password" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "s").exists()


def test_cli_errors_without_traceback(tmp_path: Path) -> None:
    no_password = qoin("keys", "new", "--out", str(tmp_path / "k.json"), *FAST)
    assert no_password.returncode == 2
    assert "no password" in no_password.stderr
    missing = qoin("keys", "show", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "cannot read keystore" in missing.stderr
    (tmp_path / "junk.json").write_text("{not json")
    junk = qoin("keys", "show", str(tmp_path / "junk.json"))
    assert junk.returncode == 2
    bad_suite = qoin("keys", "new", "--suite", "rsa", *FAST, env={"QOIN_PASSWORD": "x"})
    assert bad_suite.returncode == 2
    assert "known suites" in bad_suite.stderr
    for result in (no_password, missing, junk, bad_suite):
        assert "Traceback" not in result.stderr


def test_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k.json"
    env = {"QOIN_PASSWORD": "pw"}
    assert qoin("keys", "new", "--out", str(key), *FAST, env=env).returncode == 0
    before = key.read_bytes()
    again = qoin("keys", "new", "--out", str(key), *FAST, env=env)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert key.read_bytes() == before
