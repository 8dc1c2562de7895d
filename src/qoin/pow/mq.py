"""The multivariate-quadratic (MQ) hash over GF(2) that Qoin's proof-of-work is built on.

An MQ system is ``m`` quadratic polynomials in ``n`` variables over GF(2), drawn pseudo-randomly
from a 32-byte seed. Evaluating it maps an ``n``-bit input ``x`` to an ``m``-bit output ``y``.
Finding an ``x`` whose ``y`` meets a target is hard (solving random MQ systems is NP-hard in general
and has no known large quantum speed-up beyond Grover-style search); checking one costs a single
evaluation.

Parameters
    ``n`` variables and ``m`` equations, :class:`MQParams`. Supported: ``8 <= n <= 255`` and ``m`` a
    multiple of 64 with ``64 <= m <= 256``. The default is :data:`DEFAULT_PARAMS` (``n = m = 64``).

Monomials
    In this order: for ``i`` in ``0 .. n-1``, for ``j`` in ``i .. n-1``, the monomial ``x_i * x_j``
    (for ``i == j`` this is the linear term ``x_i``, because ``x * x = x`` over GF(2)); then the
    constant term ``1``. There are ``T = n * (n + 1) / 2 + 1`` monomials. Monomial ``(i, j)`` has
    index ``i * n - i * (i - 1) / 2 + (j - i)`` (:func:`monomial_index`); the constant is the last,
    index ``T - 1``.

Coefficients
    Every monomial has an ``m``-bit *word* whose bit ``k`` (``k = 0 .. m-1``) is the coefficient of
    that monomial in equation ``k``. The ``T`` words, in monomial order, are read consecutively
    from the stream::

        SHAKE256(b"QOIN/pow/mq-coefficients/v1" || seed)       (seed: exactly 32 bytes)

    each word ``m / 8`` bytes long and little-endian: bit ``k`` of a word is bit ``k % 8`` (least
    significant first) of its byte ``k // 8``. The stream is ``T * m / 8`` bytes in all
    (:func:`expand_coefficients`). There is no length prefix: the tag is a fixed constant.

Input
    ``x`` is ``n`` bits given as ``ceil(n / 8)`` bytes: ``x_i`` is bit ``i % 8`` (least significant
    first) of byte ``i // 8``. The ``8 * ceil(n / 8) - n`` unused high bits of the last byte must be
    zero. :func:`x_from_nonce` derives an input from a nonce of any length: the first
    ``ceil(n / 8)`` bytes of ``SHAKE256(b"QOIN/pow/mq-input/v1" || nonce)`` with the unused high
    bits of the last byte cleared.

Output
    ``y_k`` is the XOR of coefficient bit ``k`` over every monomial whose value at ``x`` is 1 (the
    constant monomial always has value 1), that is ``y = c XOR (XOR over i <= j with x_i = x_j = 1
    of w(i, j))`` on whole words. ``y`` is returned as ``m / 8`` bytes in the same bit order:
    ``y_k`` is bit ``k % 8`` of byte ``k // 8``. Read as a number (:func:`output_int`) the bytes are
    little-endian, so ``y_k`` has weight ``2**k``.

Two evaluators compute the same function: :func:`evaluate_reference` follows the definition
monomial by monomial in plain Python, and :func:`evaluate` is a vectorised NumPy version for
verifiers and miners; :func:`evaluate_batch` evaluates many inputs at once, bit-sliced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt

from qoin.errors import QoinError

TAG_MQ_COEFFICIENTS: Final = b"QOIN/pow/mq-coefficients/v1"
"""Domain tag in front of the seed in the coefficient stream."""

TAG_MQ_INPUT: Final = b"QOIN/pow/mq-input/v1"
"""Domain tag in front of the nonce in :func:`x_from_nonce`."""

SEED_SIZE: Final = 32
"""Length in bytes of the seed an MQ system is expanded from."""

MIN_VARIABLES: Final = 8
MAX_VARIABLES: Final = 255
MIN_EQUATIONS: Final = 64
MAX_EQUATIONS: Final = 256
LANE_BITS: Final = 64
"""``m`` must be a multiple of this: :func:`evaluate` works on 64-bit lanes of each word."""

_WORD_DTYPE: Final = np.dtype("<u8")
"""One 64-bit lane of a coefficient word, little-endian as in the stream."""

_BATCH_WORDS: Final = 1 << 20
"""Bound on ``T * inputs / 64`` per block of :func:`evaluate_batch` (8 MiB of monomial values)."""

Words = npt.NDArray[np.uint64]


class MQError(QoinError):
    """Invalid MQ parameters, seed, coefficient data or input."""


@dataclass(frozen=True)
class MQParams:
    """The shape of an MQ system: ``n`` variables and ``m`` equations."""

    n: int
    m: int

    def __post_init__(self) -> None:
        """Reject unsupported shapes."""
        if type(self.n) is not int or not MIN_VARIABLES <= self.n <= MAX_VARIABLES:
            raise MQError(
                f"MQ variable count n must be an integer from {MIN_VARIABLES} to {MAX_VARIABLES},"
                f" got {self.n!r}"
            )
        if (
            type(self.m) is not int
            or not MIN_EQUATIONS <= self.m <= MAX_EQUATIONS
            or self.m % LANE_BITS != 0
        ):
            raise MQError(
                f"MQ equation count m must be a multiple of {LANE_BITS} from {MIN_EQUATIONS}"
                f" to {MAX_EQUATIONS}, got {self.m!r}"
            )

    @property
    def monomial_count(self) -> int:
        """``T = n * (n + 1) / 2 + 1``: quadratic and linear monomials plus the constant."""
        return self.n * (self.n + 1) // 2 + 1

    @property
    def input_size(self) -> int:
        """Length in bytes of an input ``x``: ``ceil(n / 8)``."""
        return (self.n + 7) // 8

    @property
    def output_size(self) -> int:
        """Length in bytes of an output ``y`` and of one coefficient word: ``m / 8``."""
        return self.m // 8

    @property
    def coefficients_size(self) -> int:
        """Length in bytes of all coefficient words: ``T * m / 8``."""
        return self.monomial_count * self.output_size

    @property
    def lane_count(self) -> int:
        """Number of 64-bit lanes in a word: ``m / 64``."""
        return self.m // LANE_BITS


DEFAULT_PARAMS: Final = MQParams(n=64, m=64)
"""The parameters Qoin's proof-of-work uses unless a network says otherwise."""


def monomial_index(params: MQParams, i: int, j: int) -> int:
    """Position of the monomial ``x_i * x_j`` (``i <= j``; ``i == j`` is ``x_i``) in the order."""
    if not 0 <= i <= j < params.n:
        raise MQError(f"no monomial x_{i} * x_{j} with n = {params.n} (need 0 <= i <= j < n)")
    return i * params.n - i * (i - 1) // 2 + (j - i)


def constant_index(params: MQParams) -> int:
    """Position of the constant monomial: the last, ``T - 1``."""
    return params.monomial_count - 1


@cache
def _monomial_pairs(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``(i_idx, j_idx)``: the variables of every non-constant monomial, in monomial order."""
    # ``triu_indices`` lists the upper triangle row by row: exactly the monomial order.
    i_idx, j_idx = np.triu_indices(n)
    i_idx.flags.writeable = False
    j_idx.flags.writeable = False
    return i_idx, j_idx


@dataclass(frozen=True)
class MQSystem:
    """An MQ system: its parameters and the ``T * m / 8`` coefficient bytes, in stream layout.

    Construction also precomputes, once, what :func:`evaluate` needs (miners evaluate many inputs
    per system): ``words``, the coefficients as a read-only ``(T, m / 64)`` array of little-endian
    64-bit lanes, and ``upper``, one read-only ``(n, n)`` upper-triangular matrix per lane with
    ``upper[lane][i, j]`` the lane of the word of ``x_i * x_j`` for ``i <= j`` and zero below the
    diagonal. Equality and hashing use ``params`` and ``coefficients`` only.
    """

    params: MQParams
    coefficients: bytes
    words: Words = field(init=False, repr=False, compare=False)
    upper: tuple[Words, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the coefficient length and precompute the lane arrays."""
        params = self.params
        # A private immutable copy: the arrays below are views of it.
        coefficients = bytes(self.coefficients)
        if len(coefficients) != params.coefficients_size:
            raise MQError(
                f"MQ coefficients for n={params.n}, m={params.m} are"
                f" {params.coefficients_size} bytes, got {len(coefficients)}"
            )
        words = np.frombuffer(coefficients, dtype=_WORD_DTYPE).reshape(
            params.monomial_count, params.lane_count
        )
        i_idx, j_idx = _monomial_pairs(params.n)
        upper = []
        for lane in range(params.lane_count):
            matrix = np.zeros((params.n, params.n), dtype=_WORD_DTYPE)
            matrix[i_idx, j_idx] = words[:-1, lane]
            matrix.flags.writeable = False
            upper.append(matrix)
        object.__setattr__(self, "coefficients", coefficients)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "upper", tuple(upper))


def expand_coefficients(params: MQParams, seed: bytes) -> MQSystem:
    """The MQ system of ``params`` drawn from the 32-byte ``seed``.

    Its coefficients are the first ``T * m / 8`` bytes of
    ``SHAKE256(TAG_MQ_COEFFICIENTS || seed)``.
    """
    if len(seed) != SEED_SIZE:
        raise MQError(f"MQ seed must be {SEED_SIZE} bytes, got {len(seed)}")
    stream = hashlib.shake_256(TAG_MQ_COEFFICIENTS + bytes(seed)).digest(params.coefficients_size)
    return MQSystem(params, stream)


def coefficient_word(system: MQSystem, index: int) -> int:
    """The word of monomial ``index`` as an integer; bit ``k`` is its coefficient in equation ``k``.

    Bytes ``index * m / 8`` up to ``(index + 1) * m / 8`` of the coefficients, little-endian.
    """
    if not 0 <= index < system.params.monomial_count:
        raise MQError(f"no monomial {index} (T = {system.params.monomial_count})")
    size = system.params.output_size
    return int.from_bytes(system.coefficients[index * size : (index + 1) * size], "little")


def _last_byte_mask(params: MQParams) -> int:
    """The bits of the last input byte that hold variables (the rest must be zero)."""
    used = params.n % 8
    return 0xFF if used == 0 else (1 << used) - 1


def validate_input(params: MQParams, x: bytes) -> None:
    """Raise :class:`MQError` unless ``x`` is a well-formed ``n``-bit input."""
    if len(x) != params.input_size:
        raise MQError(f"MQ input for n={params.n} must be {params.input_size} bytes, got {len(x)}")
    if x[-1] & ~_last_byte_mask(params):
        raise MQError(f"MQ input for n={params.n} has bits set beyond bit {params.n - 1}")


def x_from_nonce(params: MQParams, nonce: bytes) -> bytes:
    """The input derived from ``nonce``: SHAKE256 of the tagged nonce, cut to ``n`` bits."""
    digest = bytearray(hashlib.shake_256(TAG_MQ_INPUT + bytes(nonce)).digest(params.input_size))
    digest[-1] &= _last_byte_mask(params)
    return bytes(digest)


def output_int(y: bytes) -> int:
    """``y`` as a number: little-endian, so output bit ``y_k`` has weight ``2**k``."""
    return int.from_bytes(y, "little")


def evaluate_reference(system: MQSystem, x: bytes) -> bytes:
    """``y = P(x)`` straight from the definition, one monomial at a time.

    Every coefficient word is an integer whose bit ``k`` belongs to equation ``k``, so XOR-ing whole
    words computes all ``m`` equations at once. Clarity over speed: use :func:`evaluate` in
    practice.
    """
    params = system.params
    validate_input(params, x)
    bits = [(x[i // 8] >> (i % 8)) & 1 for i in range(params.n)]
    y = 0
    index = 0
    for i in range(params.n):
        for j in range(i, params.n):
            if bits[i] == 1 and bits[j] == 1:
                y ^= coefficient_word(system, index)
            index += 1
    # The constant monomial is last and always has value 1.
    y ^= coefficient_word(system, index)
    return y.to_bytes(params.output_size, "little")


def _input_bits(params: MQParams, x: bytes) -> npt.NDArray[np.bool_]:
    """``x`` validated and unpacked into ``n`` booleans, ``x_0`` first."""
    validate_input(params, x)
    unpacked = np.unpackbits(np.frombuffer(x, dtype=np.uint8), count=params.n, bitorder="little")
    return unpacked.view(np.bool_)


def evaluate(system: MQSystem, x: bytes) -> bytes:
    """``y = P(x)``, vectorised; equal to :func:`evaluate_reference` for every system and input.

    With ``A`` the set of active variables (``x_i = 1``), the monomials with value 1 are the
    ``x_i * x_j`` with ``i <= j`` both in ``A``, plus the constant. For each 64-bit lane the
    rows and columns ``A`` of the upper-triangular matrix hold exactly their words (entries below
    the diagonal are zero and do not change an XOR), so one XOR reduction over that submatrix,
    XOR-ed with the constant word, gives the lane of ``y``.
    """
    active = _input_bits(system.params, x)
    y: Words = system.words[-1].copy()
    for lane, matrix in enumerate(system.upper):
        y[lane] ^= np.bitwise_xor.reduce(matrix[active][:, active], axis=None)
    return y.tobytes()


def evaluate_batch(system: MQSystem, xs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``P`` at many inputs: row ``r`` of the result is ``evaluate(system, bytes(xs[r]))``.

    ``xs`` is a ``(count, ceil(n / 8))`` array of ``uint8``, one input per row; the result is a
    ``(count, m / 8)`` array of ``uint8``, one output per row.

    The inputs are *bit-sliced*: every block of 64 inputs is transposed so that one 64-bit integer
    holds one variable for all 64 of them (bit ``b`` belongs to input ``b``). One AND per monomial
    then gives that monomial's value at 64 inputs at once, and equation ``k`` is the XOR of the
    values of the monomials whose coefficient bit ``k`` is 1, plus all ones where the constant's
    coefficient bit ``k`` is 1. The work per input grows like ``T * m / 64``, against ``n**2 / 4``
    for :func:`evaluate` plus a fixed overhead: on one core it is about 6x faster at
    ``n = m = 64``, 2x at ``n = 128``, and no faster at ``n = 255, m = 256``. It pays off from a few
    hundred inputs on.
    """
    params = system.params
    if xs.dtype != np.uint8 or xs.ndim != 2 or xs.shape[1] != params.input_size:
        raise MQError(
            f"MQ inputs for n={params.n} must be a (count, {params.input_size}) uint8 array,"
            f" got shape {xs.shape} of {xs.dtype}"
        )
    if np.any(xs[:, -1] & ~np.uint8(_last_byte_mask(params))):
        raise MQError(f"an MQ input for n={params.n} has bits set beyond bit {params.n - 1}")
    count = xs.shape[0]
    # (T, m) booleans: row t, column k is the coefficient of monomial t in equation k.
    coefficient_bits = np.unpackbits(
        np.frombuffer(system.coefficients, dtype=np.uint8).reshape(
            params.monomial_count, params.output_size
        ),
        axis=1,
        bitorder="little",
    ).view(np.bool_)
    # Row k selects the non-constant monomials of equation k.
    selections = np.ascontiguousarray(coefficient_bits[:-1].T)
    constant = coefficient_bits[-1]
    i_idx, j_idx = _monomial_pairs(params.n)
    block_words = max(1, _BATCH_WORDS // params.monomial_count)
    block_inputs = LANE_BITS * block_words
    ys = np.empty((count, params.output_size), dtype=np.uint8)
    for start in range(0, count, block_inputs):
        size = min(block_inputs, count - start)
        padded = np.zeros((-(-size // LANE_BITS) * LANE_BITS, params.input_size), dtype=np.uint8)
        padded[:size] = xs[start : start + size]
        bits = np.unpackbits(padded, axis=1, count=params.n, bitorder="little")
        # (n, words): bit b of word w of row i is x_i of input 64 * w + b.
        slices = np.ascontiguousarray(np.packbits(bits.T, axis=1, bitorder="little"))
        slices = slices.view(_WORD_DTYPE)
        values = slices[i_idx] & slices[j_idx]
        y_slices = np.empty((params.m, slices.shape[1]), dtype=_WORD_DTYPE)
        for k in range(params.m):
            y_slices[k] = np.bitwise_xor.reduce(values[selections[k]], axis=0)
        y_slices[constant] ^= ~np.uint64(0)
        y_bits = np.unpackbits(y_slices.view(np.uint8), axis=1, bitorder="little")
        ys[start : start + size] = np.packbits(y_bits.T[:size], axis=1, bitorder="little")
    return ys
