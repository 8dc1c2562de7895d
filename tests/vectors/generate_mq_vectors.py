"""Generate ``mq_vectors.json``: known-answer tests for the MQ hash (``qoin.pow.mq``).

Outputs come from :func:`qoin.pow.mq.evaluate_reference` only, the plain transcription of the
specification; the vectorised evaluators are tested against the file. Seeds and nonces are derived
from fixed labels, so running this again reproduces the checked-in file byte for byte::

    .venv/bin/python tests/vectors/generate_mq_vectors.py           # rewrite the file
    .venv/bin/python tests/vectors/generate_mq_vectors.py --check   # exit 1 if it differs

The file was generated once and is checked in; a change to it is a change to consensus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from qoin.pow.mq import (
    DEFAULT_PARAMS,
    MQParams,
    evaluate_reference,
    expand_coefficients,
    x_from_nonce,
)

OUTPUT = Path(__file__).with_name("mq_vectors.json")


def derived(label: str) -> bytes:
    """32 fixed bytes for ``label``: SHA3-256 of a test-only tag and the label."""
    return hashlib.sha3_256(b"QOIN/test-vectors/mq/v1/" + label.encode()).digest()


def vector(
    name: str, params: MQParams, seed: bytes, x: bytes, nonce: bytes | None = None
) -> dict[str, Any]:
    """One known answer, its output computed by the reference evaluator."""
    if nonce is not None:
        assert x == x_from_nonce(params, nonce)
    system = expand_coefficients(params, seed)
    return {
        "name": name,
        "params": {"n": params.n, "m": params.m},
        "seed": seed.hex(),
        "nonce": None if nonce is None else nonce.hex(),
        "x": x.hex(),
        "y": evaluate_reference(system, x).hex(),
    }


def from_nonce(name: str, params: MQParams) -> dict[str, Any]:
    """A vector whose seed and nonce are both derived from ``name``."""
    seed = derived(name + "/seed")
    nonce = derived(name + "/nonce")[:8]
    return vector(name, params, seed, x_from_nonce(params, nonce), nonce)


def vectors() -> list[dict[str, Any]]:
    """All vectors: eight for the default parameters, then a few for other shapes."""
    p = DEFAULT_PARAMS
    size = p.input_size
    result = [
        vector("default/zero-seed/zero-x", p, bytes(32), bytes(size)),
        vector("default/counting-seed/all-ones-x", p, bytes(range(32)), b"\xff" * size),
        vector("default/x0-only", p, derived("default/x0-only"), b"\x01" + bytes(size - 1)),
        vector("default/x63-only", p, derived("default/x63-only"), bytes(size - 1) + b"\x80"),
    ]
    result += [from_nonce(f"default/nonce-{index}", p) for index in range(4)]
    for n, m in [(8, 64), (13, 128), (65, 64), (96, 64), (128, 128), (200, 192), (255, 256)]:
        result.append(from_nonce(f"n{n}-m{m}/nonce", MQParams(n, m)))
    params = MQParams(13, 128)
    result.append(vector("n13-m128/all-ones-x", params, derived("n13/ones"), b"\xff\x1f"))
    return result


def render() -> str:
    """The file's exact text."""
    document = {
        "description": (
            "Known answers for the MQ hash over GF(2) (qoin.pow.mq). x and y are hex, bit i is"
            " bit i % 8 of byte i // 8 (LSB first); where nonce is given, x = x_from_nonce(nonce)."
        ),
        "generator": "tests/vectors/generate_mq_vectors.py (reference evaluator)",
        "vectors": vectors(),
    }
    return json.dumps(document, indent=2) + "\n"


def main() -> int:
    """Write the file, or with ``--check`` compare it with a fresh rendering."""
    parser = argparse.ArgumentParser(description="Generate tests/vectors/mq_vectors.json.")
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    arguments = parser.parse_args()
    text = render()
    if arguments.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print(f"{OUTPUT}: {'matches' if same else 'DIFFERS'}")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
