"""JWT HS256 for the engine API, as Ethereum's engine API uses it.

The consensus and execution clients share a 32-byte secret (a file holding 64 hex characters). Every
engine request carries ``Authorization: Bearer <jwt>`` where the JWT is HS256-signed with that secret
and its ``iat`` (issued-at, seconds) is within ±60 s of the receiver's clock. Any other algorithm —
``none`` in particular — is refused. Only the standard library's HMAC-SHA256 is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from qoin.errors import QoinError
from qoin.files import FileReadError, read_bounded

SECRET_SIZE = 32
IAT_WINDOW_S = 60
MAX_TOKEN_SIZE = 4096


class JwtError(QoinError):
    """A token that does not authenticate; the message says why."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("token part is not base64url") from None


def encode(secret: bytes, claims: dict[str, Any] | None = None, now: float | None = None) -> str:
    """An HS256 token with ``iat`` set to ``now`` (plus any extra claims)."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = {"iat": int(time.time() if now is None else now), **(claims or {})}
    payload = _b64encode(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64encode(signature)}"


def _json_part(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(text))
    except (ValueError, UnicodeDecodeError):
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
    header = _json_part(parts[0], "header")
    if header.get("alg") != "HS256":
        raise JwtError(f"algorithm {header.get('alg')!r} refused: only HS256 is accepted")
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64decode(parts[2])):
        raise JwtError("bad token signature (wrong secret?)")
    claims = _json_part(parts[1], "payload")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise JwtError("token has no integer 'iat' claim")
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
