"""JWT HS256 for the engine API, as Ethereum's engine API uses it.

The consensus and execution clients share a 32-byte secret (a file holding 64 hex characters). Every
engine request carries ``Authorization: Bearer <jwt>`` where the JWT is HS256-signed with that secret
and its ``iat`` (issued-at, seconds) is within ±60 s of the receiver's clock. Any other algorithm —
``none`` in particular — is refused. Only the standard library's HMAC-SHA256 is used.

A token is checked before anything in it is trusted or parsed as JSON: at most
:data:`MAX_TOKEN_SIZE` characters; three segments in canonical base64url (the URL-safe alphabet, no
``=`` padding, no stray characters, and decoding then encoding again gives the same text, so one
token has exactly one spelling); the signature over the first two segments. Only then are the header
(``alg`` must be ``HS256``) and the claims decoded, and ``iat`` must be an integer of at most
:data:`MAX_IAT` before it is compared with the clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded

SECRET_SIZE = 32
IAT_WINDOW_S = 60
MAX_TOKEN_SIZE = 4096
MAX_IAT = 2**63 - 1
"""The largest ``iat`` read (a signed 64-bit count of seconds, as other engine API clients send)."""
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwtError(QoinError):
    """A token that does not authenticate; the message says why."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str, what: str) -> bytes:
    """Decode a canonical base64url segment (see the module docstring)."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JwtError(f"token {what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError(f"token {what} is not unpadded base64url") from None
    if _b64encode(data) != text:  # unused low bits set: a second spelling of the same bytes
        raise JwtError(f"token {what} is not canonical base64url")
    return data


def encode(secret: bytes, claims: dict[str, Any] | None = None, now: float | None = None) -> str:
    """An HS256 token with ``iat`` set to ``now`` (plus any extra claims)."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = {"iat": int(time.time() if now is None else now), **(claims or {})}
    payload = _b64encode(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64encode(signature)}"


def _json_part(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # a signed part: still not trusted
        raise JwtError(f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"token {what} is not a JSON object")
    return value


def verify(secret: bytes, token: str, now: float | None = None) -> dict[str, Any]:
    """Check an HS256 token and its ``iat`` window; return its claims or raise :class:`JwtError`."""
    if len(token) > MAX_TOKEN_SIZE:
        raise JwtError("token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("a JWT has three dot-separated parts")
    header_data = _b64decode(parts[0], "header")
    claims_data = _b64decode(parts[1], "payload")
    signature = _b64decode(parts[2], "signature")
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise JwtError("bad token signature (wrong secret?)")
    header = _json_part(header_data, "header")
    if header.get("alg") != "HS256":
        raise JwtError(f"algorithm {header.get('alg')!r} refused: only HS256 is accepted")
    claims = _json_part(claims_data, "payload")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise JwtError("token has no integer 'iat' claim")
    if not 0 <= iat <= MAX_IAT:
        raise JwtError(f"token 'iat' is outside 0..{MAX_IAT}")
    drift = (time.time() if now is None else now) - iat
    if abs(drift) > IAT_WINDOW_S:
        raise JwtError(f"token 'iat' is {drift:+.0f} s from this clock (allowed ±{IAT_WINDOW_S} s)")
    return claims


def load_secret(path: Path) -> bytes:
    """Read a secret file: 64 hex characters (an optional ``0x`` prefix and whitespace allowed)."""
    try:
        text = read_bounded(path, 256, "JWT secret file").decode("ascii").strip()
    except (FileReadError, UnicodeDecodeError) as exc:
        raise JwtError(str(exc)) from None
    text = text.removeprefix("0x")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise JwtError(f"JWT secret file {path} is not hex") from None
    if len(secret) != SECRET_SIZE:
        raise JwtError(f"JWT secret must be {SECRET_SIZE} bytes, {path} holds {len(secret)}")
    return secret


def create_secret(path: Path) -> bytes:
    """Write a fresh random secret to ``path`` (mode 0600) unless it exists; return the secret."""
    if path.exists():
        return load_secret(path)
    secret = secrets.token_bytes(SECRET_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
    return secret
