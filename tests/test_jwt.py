"""Engine API authentication: HS256 only, iat within ±60 s, `alg: none` refused, segments in
canonical base64url, the signature checked before any JSON is parsed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from qoin.rpc.jwt import JwtError, create_secret, encode, load_secret, verify

SECRET = bytes(range(32))
NOW = 1_800_000_000


def b64(obj: object) -> str:
    return b64_bytes(json.dumps(obj).encode())


def b64_bytes(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: str, payload: str, secret: bytes = SECRET) -> str:
    """``header.payload.signature`` with a valid HS256 signature over the two segments as given."""
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64_bytes(mac)}"


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
    header, payload = b64({"alg": alg, "typ": "JWT"}), b64({"iat": NOW})
    with pytest.raises(JwtError, match="refused"):  # even with an HS256 signature that checks
        verify(SECRET, signed(header, payload), now=NOW)
    with pytest.raises(JwtError, match="signature"):  # unsigned: refused before it is read
        verify(SECRET, f"{header}.{payload}.", now=NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.x.y", "x" * 5000])
def test_malformed(token: str) -> None:
    with pytest.raises(JwtError):
        verify(SECRET, token, now=NOW)


def test_missing_iat() -> None:
    token = signed(b64({"alg": "HS256"}), b64({"sub": "x"}))
    with pytest.raises(JwtError, match="iat"):
        verify(SECRET, token, now=NOW)


@pytest.mark.parametrize(
    ("spelling", "reason"),
    [
        (lambda s: s + "==", "base64url"),  # padding
        (lambda s: s + "!!", "base64url"),  # junk the lenient decoder skipped
        (lambda s: s[:10] + "+" + s[11:], "base64url"),  # the standard (not URL) alphabet
        (lambda s: s[:-1] + chr(ord(s[-1]) + 1), "canonical"),  # unused low bits set
        (lambda s: s + "\n", "base64url"),  # whitespace, skipped by lenient decoders
    ],
    ids=["padding", "junk", "alphabet", "low bits", "whitespace"],
)
def test_signature_segment_must_be_canonical(spelling: Callable[[str], str], reason: str) -> None:
    """A token's segments have one spelling: the lenient decoder accepted a valid signature
    followed by ``!!`` or ``==`` (the signature bytes were the same), so one token had many."""
    token = encode(SECRET, {"a": ""}, now=NOW)
    header, payload, signature = token.split(".")
    # The last character of a 32-byte signature (and of this 25-byte payload) carries unused
    # bits, all zero in the canonical spelling; the next letter of the alphabet sets one.
    assert (len(signature), len(payload)) == (43, 34)
    with pytest.raises(JwtError, match=reason):
        verify(SECRET, f"{header}.{payload}.{spelling(signature)}", now=NOW)
    with pytest.raises(JwtError, match=reason):
        verify(SECRET, f"{header}.{spelling(payload)}.{signature}", now=NOW)
    assert verify(SECRET, token, now=NOW)["iat"] == NOW


def test_deep_json_refused_before_parsing_unless_signed() -> None:
    """Deeply nested JSON in the header or claims overflowed the parser's recursion (HTTP 500)
    before the signature was checked: now an unsigned one is refused unread, a signed one as
    not JSON."""
    deep = b64_bytes(b"[" * 3000)
    for token in (f"{deep}.{b64({'iat': NOW})}.", f"{b64({'alg': 'HS256'})}.{deep}."):
        with pytest.raises(JwtError, match="signature"):
            verify(SECRET, token, now=NOW)
    with pytest.raises(JwtError, match="header is not JSON"):
        verify(SECRET, signed(deep, b64({"iat": NOW})), now=NOW)
    with pytest.raises(JwtError, match="payload is not JSON"):
        verify(SECRET, signed(b64({"alg": "HS256"}), deep), now=NOW)


@pytest.mark.parametrize(
    "iat", [10**2000, -1, 2**63, -(10**2000)], ids=["2000 digits", "-1", "2**63", "-2000 digits"]
)
def test_iat_out_of_range(iat: int) -> None:
    """An ``iat`` of 2,000 digits overflowed the float comparison with the clock (HTTP 500)."""
    payload = b64_bytes(b'{"iat":%d}' % iat)
    with pytest.raises(JwtError, match="outside"):
        verify(SECRET, signed(b64({"alg": "HS256"}), payload), now=NOW)


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
