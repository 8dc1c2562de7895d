"""Engine API authentication: HS256 only, iat within ±60 s, `alg: none` refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from qoin.rpc.jwt import JwtError, create_secret, encode, load_secret, verify

SECRET = bytes(range(32))
NOW = 1_800_000_000


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_roundtrip_and_window() -> None:
    token = encode(SECRET, now=NOW)
    assert verify(SECRET, token, now=NOW + 60)["iat"] == NOW
    assert verify(SECRET, token, now=NOW - 60)["iat"] == NOW
    with pytest.raises(JwtError, match="iat"):
        verify(SECRET, token, now=NOW + 61)
    with pytest.raises(JwtError, match="iat"):
        verify(SECRET, token, now=NOW - 61)


def test_wrong_secret_and_tampering() -> None:
    token = encode(SECRET, now=NOW)
    with pytest.raises(JwtError, match="signature"):
        verify(bytes(32), token, now=NOW)
    header, _payload, signature = token.split(".")
    forged = f"{header}.{b64({'iat': NOW + 1})}.{signature}"
    with pytest.raises(JwtError, match="signature"):
        verify(SECRET, forged, now=NOW)


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", None])
def test_other_algorithms_refused(alg: str | None) -> None:
    token = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64({'iat': NOW})}."
    with pytest.raises(JwtError, match="refused"):
        verify(SECRET, token, now=NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.x.y", "x" * 5000])
def test_malformed(token: str) -> None:
    with pytest.raises(JwtError):
        verify(SECRET, token, now=NOW)


def test_missing_iat() -> None:
    header, payload = b64({"alg": "HS256"}), b64({"sub": "x"})
    mac = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(JwtError, match="iat"):
        verify(SECRET, token, now=NOW)


def test_secret_files(tmp_path: Path) -> None:
    path = tmp_path / "jwt.hex"
    secret = create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == secret
    assert create_secret(path) == secret
    (tmp_path / "short.hex").write_text("abcd")
    with pytest.raises(JwtError, match="32 bytes"):
        load_secret(tmp_path / "short.hex")
    (tmp_path / "junk.hex").write_text("zz" * 32)
    with pytest.raises(JwtError, match="not hex"):
        load_secret(tmp_path / "junk.hex")
