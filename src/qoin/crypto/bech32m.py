"""Bech32m text encoding (BIP-350) of byte strings, written from the specification.

Only what Qoin needs: a human-readable part and an 8-bit payload regrouped into 5-bit symbols with zero
padding. Decoding rejects mixed case, characters outside the alphabet, a bad checksum, a wrong
human-readable part, non-zero padding and over-long strings, each with its own message.
"""

from __future__ import annotations

from qoin.errors import QoinError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}
BECH32M_CONST = 0x2BC830A3
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90
CHECKSUM_LENGTH = 6


class Bech32Error(QoinError):
    """A string is not a valid bech32m encoding of what was expected."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for bit, gen in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data: bytes) -> list[int]:
    acc, bits, out = 0, 0, []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def _from_5bit(symbols: list[int]) -> bytes:
    acc, bits, out = 0, 0, bytearray()
    for symbol in symbols:
        acc = (acc << 5) | symbol
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise Bech32Error("invalid padding in the data part")
    return bytes(out)


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under the lower-case human-readable part ``hrp``."""
    symbols = _to_5bit(data)
    polymod = _polymod([*_hrp_expand(hrp), *symbols, 0, 0, 0, 0, 0, 0]) ^ BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH)]
    text = hrp + "1" + "".join(CHARSET[s] for s in symbols + checksum)
    if len(text) > MAX_LENGTH:
        raise Bech32Error(f"encoding would be {len(text)} characters, over {MAX_LENGTH}")
    return text


def decode_raw(text: str) -> tuple[str, list[int]]:
    """Check a bech32m string's form and checksum; return its human-readable part and symbols.

    The returned symbols exclude the checksum. Any valid bech32m string is accepted here, whatever its
    human-readable part or payload length.
    """
    if len(text) > MAX_LENGTH:
        raise Bech32Error(f"too long: {len(text)} characters (at most {MAX_LENGTH})")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed upper and lower case is not allowed")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 1 or sep + CHECKSUM_LENGTH + 1 > len(text):
        raise Bech32Error("missing '1' separator or too short to hold a checksum")
    hrp, data_part = text[:sep], text[sep + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("invalid character in the human-readable part")
    bad = sorted({c for c in data_part if c not in _CHARSET_INDEX})
    if bad:
        raise Bech32Error(f"invalid character(s) {''.join(bad)!r} in the data part")
    symbols = [_CHARSET_INDEX[c] for c in data_part]
    if _polymod([*_hrp_expand(hrp), *symbols]) != BECH32M_CONST:
        raise Bech32Error("checksum mismatch (typo, or not a bech32m string)")
    return hrp, symbols[:-CHECKSUM_LENGTH]


def decode(expected_hrp: str, text: str) -> bytes:
    """Decode a bech32m string whose human-readable part must be ``expected_hrp``."""
    hrp, symbols = decode_raw(text)
    if hrp != expected_hrp:
        raise Bech32Error(f"wrong prefix {hrp!r}: expected {expected_hrp!r}")
    return _from_5bit(symbols)
