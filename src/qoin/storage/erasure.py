"""Erasure coding: n shards of a file of which any k rebuild it (docs/spec/storage.md §2).

``shard_size = shard_size_for(size, k, leaf_size)`` (``ceil(size / k)`` rounded up to a whole
number of leaves). The file is zero-padded to ``k x shard_size`` bytes.

k = 1
    Replication: every shard is the padded file.
k > 1
    A systematic Reed-Solomon code over GF(2^8) (polynomial ``x^8 + x^4 + x^3 + x^2 + 1``, 0x11D):
    shards ``0 .. k-1`` are the padded file cut into k contiguous pieces; parity shard ``k + i``
    (``0 <= i < n - k``) is, byte by byte, ``sum_j C[i][j] * shard_j`` with the Cauchy matrix
    ``C[i][j] = 1 / ((k + i) XOR j)``. Every square submatrix of a Cauchy matrix is invertible, so
    any k of the n shards rebuild the data. The matrix is part of the rule set: a provider that
    repairs a shard must rebuild exactly the bytes its committed root was computed from.

:func:`encode` gives all n shards; :func:`shard_stripes` (and :func:`encode_shard`) one of them
alone, stripe by stripe, so shards can be built in parallel or streamed. :func:`decode` and
:func:`rebuild` take any k of the shards.

The byte arithmetic is vectorized with numpy (a 256 x 256 multiplication table, one table lookup
per source byte) and runs over stripes of :data:`STRIPE` bytes per shard, so temporaries stay small
whatever the shard size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from qoin.errors import QoinError
from qoin.storage.merkle import MAX_SHARDS, StorageMerkleError, shard_size_for
from qoin.storage.params import MAX_LEAF_SIZE

STRIPE: Final = 1 << 20
"""Bytes of each shard combined per step."""
POLYNOMIAL: Final = 0x11D
"""The field's reduction polynomial."""

ByteArray = npt.NDArray[np.uint8]
BytesLike = bytes | bytearray | memoryview
"""Anything bytes-like encoded here (a memory-mapped file's view included)."""


class ErasureError(QoinError):
    """Erasure coding parameters or shards that cannot give the data (too few, wrong sizes)."""


def _tables() -> tuple[list[int], list[int], ByteArray]:
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= POLYNOMIAL
    for power in range(255, 510):
        exp[power] = exp[power - 255]
    logs = np.array(log, dtype=np.int64)
    sums = (logs[:, None] + logs[None, :]) % 255
    table = np.array(exp[:255], dtype=np.uint8)[sums]
    table[0, :] = 0
    table[:, 0] = 0
    return exp, log, table


_EXP, _LOG, _MUL = _tables()


def gf_mul(a: int, b: int) -> int:
    """The product of two field elements (bytes)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """The multiplicative inverse of a non-zero field element."""
    if not 1 <= a <= 255:
        raise ErasureError(f"{a} has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


def _check_code(n: int, k: int) -> None:
    if not 1 <= k < n <= MAX_SHARDS:
        raise ErasureError(f"erasure code n = {n}, k = {k}: need 1 <= k < n <= {MAX_SHARDS}")


def coding_row(index: int, k: int) -> list[int]:
    """Row ``index`` of the n x k encoding matrix: the unit row j for data shard j < k, the Cauchy
    row ``1 / ((k + i) XOR j)`` for parity shard ``k + i``."""
    if index < k:
        return [int(column == index) for column in range(k)]
    return [gf_inv(index ^ column) for column in range(k)]


def _invert(matrix: list[list[int]]) -> list[list[int]]:
    """The inverse of a square matrix over GF(2^8) (Gauss-Jordan)."""
    size = len(matrix)
    work = [
        row[:] + [int(column == number) for column in range(size)]
        for number, row in enumerate(matrix)
    ]
    for column in range(size):
        pivot = next((row for row in range(column, size) if work[row][column]), None)
        if pivot is None:
            raise ErasureError("the chosen shards' rows are singular (not a valid erasure code)")
        work[column], work[pivot] = work[pivot], work[column]
        scale = gf_inv(work[column][column])
        work[column] = [gf_mul(scale, value) for value in work[column]]
        for row in range(size):
            factor = work[row][column]
            if row != column and factor:
                work[row] = [
                    value ^ gf_mul(factor, lead)
                    for value, lead in zip(work[row], work[column], strict=True)
                ]
    return [row[size:] for row in work]


def _combine(coefficients: Sequence[int], sources: Sequence[ByteArray], size: int) -> bytes:
    """``sum_j coefficients[j] * sources[j]`` over GF(2^8), byte by byte, a stripe at a time."""
    result = np.zeros(size, dtype=np.uint8) if not any(coefficients) else np.empty(size, np.uint8)
    product = np.empty(min(size, STRIPE), dtype=np.uint8)
    for start in range(0, size, STRIPE):
        end = min(start + STRIPE, size)
        target = result[start:end]
        scratch = product[: end - start]
        first = True
        for coefficient, source in zip(coefficients, sources, strict=True):
            if coefficient == 0:
                continue
            if coefficient == 1:
                term = source[start:end]
            else:
                term = np.take(_MUL[coefficient], source[start:end], out=scratch)
            if first:
                target[:] = term
                first = False
            else:
                np.bitwise_xor(target, term, out=target)
    return result.tobytes()


def _data_shards(data: BytesLike, n: int, k: int, leaf_size: int) -> list[BytesLike]:
    """The k data shards of ``data`` (views into it, the last ones zero-padded copies)."""
    _check_code(n, k)
    try:
        shard_size = shard_size_for(len(data), k, leaf_size)
    except StorageMerkleError as exc:
        raise ErasureError(str(exc)) from None
    view = memoryview(data)
    pieces: list[BytesLike] = []
    for index in range(k):
        piece = view[index * shard_size : (index + 1) * shard_size]
        if len(piece) < shard_size:
            pieces.append(bytes(piece) + bytes(shard_size - len(piece)))
        else:
            pieces.append(piece)
    return pieces


def encode(data: BytesLike, n: int, k: int, leaf_size: int) -> list[bytes]:
    """The n shards of ``data`` (each :func:`~qoin.storage.merkle.shard_size_for` bytes)."""
    shards = [bytes(piece) for piece in _data_shards(data, n, k, leaf_size)]
    if k == 1:
        return shards * n
    sources = [np.frombuffer(shard, dtype=np.uint8) for shard in shards]
    for index in range(k, n):
        shards.append(_combine(coding_row(index, k), sources, len(shards[0])))
    return shards


def shard_stripes(data: BytesLike, n: int, k: int, leaf_size: int, index: int) -> Iterator[bytes]:
    """Shard ``index`` of :func:`encode`, :data:`STRIPE` bytes at a time (the last stripe
    shorter): one shard without the others and without holding it whole (a client may build its
    shards in parallel, one process each, and hash them as they come,
    :class:`~qoin.storage.merkle.ShardTreeBuilder`)."""
    pieces = _data_shards(data, n, k, leaf_size)
    if not 0 <= index < n:
        raise ErasureError(f"shard index {index} is not 0 to {n - 1}")
    return _stripes(pieces, k, index)


def _stripes(pieces: list[BytesLike], k: int, index: int) -> Iterator[bytes]:
    shard_size = len(pieces[0])
    if index < k or k == 1:
        piece = memoryview(pieces[index % k])
        for start in range(0, shard_size, STRIPE):
            yield bytes(piece[start : start + STRIPE])
        return
    sources = [np.frombuffer(piece, dtype=np.uint8) for piece in pieces]
    row = coding_row(index, k)
    for start in range(0, shard_size, STRIPE):
        stripe = [source[start : start + STRIPE] for source in sources]
        yield _combine(row, stripe, len(stripe[0]))


def encode_shard(data: BytesLike, n: int, k: int, leaf_size: int, index: int) -> bytes:
    """Shard ``index`` of :func:`encode` alone (``encode(...)[index]`` without the others)."""
    return b"".join(shard_stripes(data, n, k, leaf_size, index))


def _sources(shards: Mapping[int, bytes], n: int, k: int) -> tuple[list[int], list[ByteArray], int]:
    """k of the given shards (data shards first), checked: their indices, arrays and size."""
    _check_code(n, k)
    for index in shards:
        if not 0 <= index < n:
            raise ErasureError(f"shard index {index} is not 0 to {n - 1}")
    if len(shards) < k:
        raise ErasureError(f"{len(shards)} shards given; any {k} of the {n} are needed")
    sizes = {len(shard) for shard in shards.values()}
    if len(sizes) != 1:
        raise ErasureError(f"the shards differ in size ({sorted(sizes)} bytes): all must be equal")
    size = sizes.pop()
    if size == 0:
        raise ErasureError("the shards are empty")
    chosen = sorted(shards)[:k]
    arrays = [np.frombuffer(shards[index], dtype=np.uint8) for index in chosen]
    return chosen, arrays, size


def _recover(chosen: list[int], arrays: list[ByteArray], k: int, wanted: int, size: int) -> bytes:
    """Shard ``wanted`` from the k shards ``chosen``."""
    if wanted in chosen:
        return arrays[chosen.index(wanted)].tobytes()
    inverse = _invert([coding_row(index, k) for index in chosen])
    row = coding_row(wanted, k)
    coefficients = [0] * k
    for column, factor in enumerate(row):
        if factor:
            for source in range(k):
                coefficients[source] ^= gf_mul(factor, inverse[column][source])
    return _combine(coefficients, arrays, size)


def decode(shards: Mapping[int, bytes], n: int, k: int, size: int) -> bytes:
    """The ``size``-byte file from any k (or more) of its n shards, given by index.

    :class:`ErasureError` if fewer than k are given, they differ in size, they are too small for
    ``size`` bytes, or the padding they decode to is not zero (inconsistent shards).
    """
    chosen, arrays, shard_size = _sources(shards, n, k)
    if not 0 <= size <= k * shard_size or shard_size >= max(1, -(-size // k)) + MAX_LEAF_SIZE:
        raise ErasureError(
            f"shards of {shard_size} bytes do not hold a {size}-byte file with k = {k}"
        )
    if k == 1:
        pieces = [shards[chosen[0]]]
    else:
        pieces = [_recover(chosen, arrays, k, index, shard_size) for index in range(k)]
    used = [min(shard_size, max(0, size - index * shard_size)) for index in range(k)]
    for piece, length in zip(pieces, used, strict=True):
        if piece[length:].count(0) != shard_size - length:
            raise ErasureError(
                "the shards are inconsistent: the file's padding does not decode to zeros"
            )
    return b"".join(memoryview(piece)[:length] for piece, length in zip(pieces, used, strict=True))


def rebuild(shards: Mapping[int, bytes], n: int, k: int, index: int) -> bytes:
    """Shard ``index`` from any k (or more) of the n shards (what a repairing provider stores)."""
    chosen, arrays, shard_size = _sources(shards, n, k)
    if not 0 <= index < n:
        raise ErasureError(f"shard index {index} is not 0 to {n - 1}")
    if k == 1:
        return arrays[0].tobytes()
    return _recover(chosen, arrays, k, index, shard_size)
