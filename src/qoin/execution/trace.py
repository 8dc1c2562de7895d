"""A block's trace: the access records of all its steps, their summary, and their encodings.

The :class:`~qoin.execution.overlay.StateOverlay` records one
:class:`~qoin.execution.overlay.StepAccess` per step (the cron step, each transaction, the
payouts); together they are the block's :class:`BlockTrace`. Account state sampling first fetches
the block's :class:`TraceSummary` (each value as a :data:`ValueRef`: itself if short, else its
hash), then the full records of the few steps it re-executes (docs/spec/sampling.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NewType, TypeVar

from qoin.crypto.hashing import sha3_256
from qoin.encoding.codec import (
    NonCanonicalInteger,
    OversizeField,
    Reader,
    TrailingBytes,
    TruncatedInput,
    Writer,
    encode_varint,
)
from qoin.errors import QoinError
from qoin.execution.overlay import StepAccess, TraceIncomplete
from qoin.state.smt import KEY_SIZE, MAX_VALUE_SIZE

MAX_TRACE_STEPS = 8192 + 2
"""A block's steps: the cron step, each transaction, the payouts."""
MAX_TRACE_ITEMS = 1 << 20
"""Distinct (key, value) items one trace may hold."""
MAX_STEP_KEYS = 1 << 17
"""Keys one step may access (bounded in practice by the block gas limit)."""


@dataclass(frozen=True)
class BlockTrace:
    """The access of every step of a block (cron step, transactions, payouts), in order.

    Encoding: a table of distinct items, then each step as indexes into it (a module read by a
    thousand calls is carried once)::

        count varint (<= MAX_TRACE_ITEMS), then items: key 32 bytes ‖ u8 present ‖ [varbytes value]
        count varint (<= MAX_TRACE_STEPS), then steps: varint n ‖ n item indexes (pre), varint m ‖
                                                        m item indexes (post, values present) ‖
                                                        varint fee
    """

    steps: tuple[StepAccess, ...]
    """One per step."""

    def keys(self) -> list[bytes]:
        """Every key any step accessed, in first-access order."""
        return _first_access(self.steps)

    def summary(self) -> TraceSummary:
        """The trace with every value replaced by its :data:`ValueRef` (computed once per
        trace)."""
        cached: TraceSummary | None = self.__dict__.get("_summary")
        if cached is None:
            refs: dict[tuple[bytes, bytes | None], tuple[bytes, ValueRef]] = {}

            def ref(item: tuple[bytes, bytes | None]) -> tuple[bytes, ValueRef]:
                found = refs.get(item)
                if found is None:
                    found = refs[item] = (item[0], value_ref(item[1]))
                return found

            cached = TraceSummary(
                tuple(
                    StepSummary(tuple(map(ref, step.pre)), tuple(map(ref, step.post)), step.fee)
                    for step in self.steps
                )
            )
            self.__dict__["_summary"] = cached  # frozen: set once, as a cache
        return cached

    def encode_summary(self) -> bytes:
        """``self.summary().encode()``, computed straight from the trace and once per trace (what
        an execution client serves for ``engine_getTrace``: the same table of distinct items,
        each value written as its reference)."""
        cached: bytes | None = self.__dict__.get("_summary_encoding")
        if cached is None:
            writer = Writer()
            _write_steps(writer, [(s.pre, s.post, s.fee) for s in self.steps], value_ref)
            cached = self.__dict__["_summary_encoding"] = writer.bytes()
        return cached

    def forget_summary(self) -> None:
        """Drop the cached summary and its encoding (a benchmark measures building them)."""
        self.__dict__.pop("_summary", None)
        self.__dict__.pop("_summary_encoding", None)

    def encode(self) -> bytes:
        """Canonical encoding (class docstring)."""
        writer = Writer()
        _write_steps(writer, [(s.pre, s.post, s.fee) for s in self.steps], _value_bytes)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> BlockTrace:
        """Decode, bounding every count before reading; indexes must point into the table, pre
        keys be sorted and distinct, post items be present values of keys the step accessed."""
        reader = Reader(data)
        trace = cls._read(reader, MAX_TRACE_STEPS)
        reader.finish()
        return trace

    @classmethod
    def _read(cls, reader: Reader, max_steps: int) -> BlockTrace:
        steps = []
        for pre, post, fee in _read_steps(reader, max_steps, _parse_value, None):
            present = tuple((key, value) for key, value in post if value is not None)
            steps.append(StepAccess(pre, present, fee))
        return cls(tuple(steps))


# -- trace summaries (what account state sampling fetches first) -----------------------------------

MAX_INLINE_VALUE = 32
"""Values of at most this many bytes are carried as themselves in a :class:`TraceSummary`; a longer
one as its SHA3-256."""
MAX_STEP_RECORDS = 1024
"""Full step records asked for in one ``engine_getSteps`` call (and served in one answer)."""
REF_ABSENT = 0
"""Tag of a :data:`ValueRef` to an absent value."""
REF_VALUE = 1
"""Tag of a :data:`ValueRef` that is the value itself (at most :data:`MAX_INLINE_VALUE` bytes)."""
REF_HASH = 2
"""Tag of a :data:`ValueRef` that is the SHA3-256 of a value longer than
:data:`MAX_INLINE_VALUE` bytes."""
HASH_SIZE = 32
"""Bytes of a SHA3-256 digest in a :data:`REF_HASH` reference."""

ValueRef = NewType("ValueRef", bytes)
"""How a :class:`TraceSummary` refers to a state value, as its own canonical encoding: a tag byte,
then nothing (:data:`REF_ABSENT`: the value is absent), the value as varbytes of at most
:data:`MAX_INLINE_VALUE` bytes (:data:`REF_VALUE`), or the 32-byte SHA3-256 of a longer value
(:data:`REF_HASH`). Every value has exactly one reference (:func:`value_ref`), so a value matches a
reference iff its own reference is equal to it (:func:`ref_matches`)."""

_ABSENT_TAG, _VALUE_TAG, _HASH_TAG = (bytes((tag,)) for tag in (REF_ABSENT, REF_VALUE, REF_HASH))
ABSENT_REF = ValueRef(_ABSENT_TAG)
"""The reference to an absent value."""


def value_ref(value: bytes | None) -> ValueRef:
    """The reference to ``value`` (None: absent)."""
    if value is None:
        return ABSENT_REF
    if len(value) <= MAX_INLINE_VALUE:
        return ValueRef(_VALUE_TAG + bytes((len(value),)) + value)
    return ValueRef(_HASH_TAG + sha3_256(value))


def ref_matches(ref: ValueRef, value: bytes | None) -> bool:
    """Whether ``value`` (None: absent) is the value ``ref`` refers to: equal, or hashing to it."""
    if value is not None and len(value) > MAX_INLINE_VALUE and ref[0] != REF_HASH:
        return False  # no need to hash it
    return ref == value_ref(value)


def ref_is_hash(ref: ValueRef) -> bool:
    """Whether ``ref`` is a digest (the value itself must be fetched)."""
    return ref[0] == REF_HASH


def ref_value(ref: ValueRef) -> bytes | None:
    """The value ``ref`` carries (None: absent); :class:`ValueError` for a digest."""
    if ref[0] == REF_HASH:
        raise ValueError("a hashed reference does not carry its value")
    return None if ref[0] == REF_ABSENT else ref[2:]


def show_ref(ref: ValueRef) -> str:
    """A reference in a reason: absent, a value's first bytes in hex, or a digest."""
    if ref[0] == REF_ABSENT:
        return "absent"
    if ref[0] == REF_HASH:
        return f"a value of SHA3-256 {ref[1:9].hex()}..."
    value = ref[2:]
    text = value[:16].hex()
    return f"{text}... ({len(value)} bytes)" if len(value) > 16 else text or "empty"


def parse_ref(data: bytes) -> ValueRef:
    """``data`` as a reference, if it is exactly one (:class:`ValueError` otherwise)."""
    try:
        ref, end = _parse_ref(data, 0)
    except (IndexError, QoinError):
        raise ValueError(f"not a value reference: {data.hex()}") from None
    if end != len(data):
        raise ValueError(f"not a value reference: {data.hex()}")
    return ref


@dataclass(frozen=True)
class StepSummary:
    """One step of a :class:`TraceSummary`: the keys of its :class:`StepAccess`, in the same order,
    each with a :data:`ValueRef` instead of its value, and its fee."""

    pre: tuple[tuple[bytes, ValueRef], ...]
    """Every key the step accessed, sorted, with a reference to its value before the step."""
    post: tuple[tuple[bytes, ValueRef], ...]
    """Every key the step changed, sorted, with a reference to its value after it (never absent)."""
    fee: int = 0
    """Shor the step charged its sender."""

    @classmethod
    def of(cls, access: StepAccess) -> StepSummary:
        """The summary of a full step record."""
        return cls(
            tuple((key, value_ref(value)) for key, value in access.pre),
            tuple((key, value_ref(value)) for key, value in access.post),
            access.fee,
        )

    def keys(self) -> list[bytes]:
        """The keys the step accessed."""
        return [key for key, _ in self.pre]

    def full(self) -> StepAccess | None:
        """The full record, when every reference carries its value (nothing to fetch); else None."""
        if any(ref[0] == REF_HASH for _, ref in self.pre) or any(
            ref[0] != REF_VALUE for _, ref in self.post
        ):
            return None
        return StepAccess(
            tuple((key, ref_value(ref)) for key, ref in self.pre),
            tuple((key, ref[2:]) for key, ref in self.post),
            self.fee,
        )

    def mismatch(self, access: StepAccess) -> str | None:
        """How the full record ``access`` differs from this summary, in words (None: it matches
        exactly: the same keys in the same order, each value matching its reference, the same
        fee)."""
        if access.fee != self.fee:
            return f"it charges {access.fee} Shor, the summary says {self.fee}"
        for what, summary, record in (
            ("before", self.pre, access.pre),
            ("after", self.post, access.post),
        ):
            if [key for key, _ in summary] != [key for key, _ in record]:
                return f"the keys it records {what} the step are not those of the summary"
            for (key, ref), (_, value) in zip(summary, record, strict=True):
                if not ref_matches(ref, value):
                    return (
                        f"key {key.hex()} {what} it is {show_ref(value_ref(value))}, the summary "
                        f"says {show_ref(ref)}"
                    )
        return None


@dataclass(frozen=True)
class TraceSummary:
    """A :class:`BlockTrace` with every value replaced by its :data:`ValueRef`: the same steps,
    keys and fees (what ``engine_getTrace`` serves; a public key leaf travels as 32 bytes).

    Encoding: :class:`BlockTrace`'s, with a reference in place of each item's value::

        count varint (<= MAX_TRACE_ITEMS), then items: key 32 bytes ‖ u8 tag ‖ reference
            (tag 0: absent, nothing; tag 1: varbytes value <= MAX_INLINE_VALUE; tag 2: 32 bytes
            SHA3-256 of a longer value)
        count varint (<= MAX_TRACE_STEPS), then steps: as in BlockTrace (post items never absent)
    """

    steps: tuple[StepSummary, ...]
    """One per step."""

    def keys(self) -> list[bytes]:
        """Every key any step accessed, in first-access order."""
        return _first_access(self.steps)

    def encode(self) -> bytes:
        """Canonical encoding (class docstring); computed once per summary."""
        cached: bytes | None = self.__dict__.get("_encoded")
        if cached is None:
            writer = Writer()
            _write_steps(writer, [(s.pre, s.post, s.fee) for s in self.steps], _ref_bytes)
            cached = self.__dict__["_encoded"] = writer.bytes()  # frozen: set once, as a cache
        return cached

    @classmethod
    def decode(cls, data: bytes) -> TraceSummary:
        """Decode with :meth:`BlockTrace.decode`'s checks; a tag must be 0, 1 or 2."""
        reader = Reader(data)
        steps = tuple(
            StepSummary(pre, post, fee)
            for pre, post, fee in _read_steps(reader, MAX_TRACE_STEPS, _parse_ref, ABSENT_REF)
        )
        reader.finish()
        return cls(steps)


def encode_step_records(records: Mapping[int, StepAccess]) -> bytes:
    """The canonical encoding of full step records by step index (an ``engine_getSteps``
    answer)::

        count varint (<= MAX_STEP_RECORDS) ‖ count step indexes, varints, strictly increasing ‖
        the BlockTrace encoding of the count records, in that order
    """
    if len(records) > MAX_STEP_RECORDS:
        raise ValueError(f"at most {MAX_STEP_RECORDS} step records at once")
    order = sorted(records)
    writer = Writer().varint(len(order))
    for index in order:
        writer.varint(index)
    return writer.raw(BlockTrace(tuple(records[i] for i in order)).encode()).bytes()


def step_indexes(values: Sequence[object]) -> list[int]:
    """The step numbers of an ``engine_getSteps`` request, sorted, each once: integers from 0 to
    :data:`MAX_TRACE_STEPS` - 1, at most :data:`MAX_STEP_RECORDS` of them (:class:`ValueError`
    otherwise)."""
    if len(values) > MAX_STEP_RECORDS:
        raise ValueError(f"at most {MAX_STEP_RECORDS} step indexes at once")
    indexes: set[int] = set()
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("step indexes are integers")
        if not 0 <= value < MAX_TRACE_STEPS:
            raise ValueError(f"step index {value} is not between 0 and {MAX_TRACE_STEPS - 1}")
        indexes.add(value)
    return sorted(indexes)


def decode_step_records(data: bytes) -> dict[int, StepAccess]:
    """Decode :func:`encode_step_records`'s encoding, bounded like a :class:`BlockTrace`; the
    indexes must be strictly increasing, below :data:`MAX_TRACE_STEPS`, one per record."""
    reader = Reader(data)
    indexes = [reader.varint() for _ in range(reader.count(MAX_STEP_RECORDS))]
    if any(b <= a for a, b in itertools.pairwise(indexes)) or (
        indexes and indexes[-1] >= MAX_TRACE_STEPS
    ):
        raise TraceIncomplete("step indexes are not strictly increasing step numbers")
    trace = BlockTrace._read(reader, MAX_STEP_RECORDS)
    reader.finish()
    if len(trace.steps) != len(indexes):
        raise TraceIncomplete(f"{len(indexes)} step indexes for {len(trace.steps)} records")
    return dict(zip(indexes, trace.steps, strict=True))


# -- the shared table encoding ---------------------------------------------------------------------

V = TypeVar("V")
_Items = Sequence[tuple[bytes, V]]


def _write_steps(
    writer: Writer,
    steps: Sequence[tuple[_Items[V], _Items[V], int]],
    value_bytes: Callable[[V], bytes],
) -> None:
    """Write a table of distinct (key, value) items (``value_bytes`` encodes a value), then each
    step as indexes into it (assembled here rather than through the writer: a block's trace has
    thousands of small fields)."""
    table: dict[tuple[bytes, V], int] = {}
    order: list[tuple[bytes, V]] = []
    body: list[bytes] = []
    push = body.append
    one_byte = _ONE_BYTE
    for pre, post, fee in steps:
        for items in (pre, post):
            push(_varint_bytes(len(items)))
            for item in items:
                found = table.get(item)
                if found is None:
                    found = table[item] = len(order)
                    order.append(item)
                if found < 0x80:
                    push(one_byte[found])
                elif found < 0x4000:
                    push(bytes((found & 0x7F | 0x80, found >> 7)))
                else:
                    push(encode_varint(found))
        push(_varint_bytes(fee))
    head: list[bytes] = [encode_varint(len(order))]
    for key, value in order:
        if len(key) != KEY_SIZE:
            raise OversizeField(f"trace keys are {KEY_SIZE} bytes, got {len(key)}")
        head.append(key)
        head.append(value_bytes(value))
    head.append(encode_varint(len(steps)))
    writer.raw(b"".join(head)).raw(b"".join(body))


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]
"""The varints of 0 to 127."""


def _varint_bytes(value: int) -> bytes:
    """The minimal varint of ``value`` (the codec's ``encode_varint``, the short ones faster)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0x80 <= value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    return encode_varint(value)


def _read_steps(
    reader: Reader,
    max_steps: int,
    parse_value: Callable[[bytes, int], tuple[V, int]],
    absent: object,
) -> list[tuple[tuple[tuple[bytes, V], ...], tuple[tuple[bytes, V], ...], int]]:
    """Read what :func:`_write_steps` wrote, to the end of the input, bounding every count before
    reading; indexes must point into the table, pre keys be sorted and distinct, post items be
    present values of keys the step accessed, sorted and distinct. (Parsed from the bytes here
    rather than through the reader: a block's trace has thousands of small fields.)"""
    data = reader.fixed(reader.remaining)
    try:
        count, pos = _varint(data, 0)
        if count > MAX_TRACE_ITEMS:
            raise OversizeField(f"{count} trace items exceed the bound of {MAX_TRACE_ITEMS}")
        items: list[tuple[bytes, V]] = []
        for _ in range(count):
            key = data[pos : pos + KEY_SIZE]
            value, pos = parse_value(data, pos + KEY_SIZE)  # reads past a short key's end
            items.append((key, value))
        count, pos = _varint(data, pos)
        if count > max_steps:
            raise OversizeField(f"{count} steps exceed the bound of {max_steps}")
        steps, pos = _parse_steps(data, pos, count, items, absent)
    except IndexError:
        raise TruncatedInput("the trace ends too soon") from None
    if pos != len(data):
        raise TrailingBytes(f"{len(data) - pos} trailing bytes after the trace")
    return steps


def _take(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    """``size`` bytes at ``pos`` and the offset after them (IndexError where the input ends)."""
    end = pos + size
    if end > len(data):
        raise IndexError("input ends")
    return data[pos:end], end


def _parse_steps(
    data: bytes, pos: int, count: int, items: list[tuple[bytes, V]], absent: object
) -> tuple[list[tuple[tuple[tuple[bytes, V], ...], tuple[tuple[bytes, V], ...], int]], int]:
    """:func:`_read_steps`' ``count`` steps from offset ``pos`` of ``data`` (IndexError where it
    ends too soon); the steps and the offset after them."""
    size = len(items)
    item = items.__getitem__
    steps = []
    for _ in range(count):
        positions, pos = _parse_indexes(data, pos, size)
        pre = tuple(map(item, positions))
        positions, pos = _parse_indexes(data, pos, size)
        post = tuple(map(item, positions))
        _check_step(pre, post, absent)
        fee = data[pos]
        if fee < 0x80:
            pos += 1
        else:
            fee, pos = _varint(data, pos)
        steps.append((pre, post, fee))
    return steps, pos


def _parse_indexes(data: bytes, pos: int, size: int) -> tuple[list[int], int]:
    """A count, then that many item indexes, each below ``size``, from offset ``pos`` of ``data``
    (varints, the one- and two-byte ones read inline); the indexes and the offset after them."""
    count = data[pos]
    if count < 0x80:
        pos += 1
    else:
        count, pos = _varint(data, pos)
        if count > MAX_STEP_KEYS:
            raise TraceIncomplete(f"a step lists {count} keys, over {MAX_STEP_KEYS}")
    positions: list[int] = []
    append = positions.append
    for _ in range(count):
        byte = data[pos]
        if byte < 0x80:
            append(byte)
            pos += 1
        elif 0 < (second := data[pos + 1]) < 0x80:  # two bytes, minimal
            append((byte & 0x7F) | second << 7)
            pos += 2
        else:
            value, pos = _varint(data, pos)
            append(value)
    if positions and max(positions) >= size:
        raise TraceIncomplete(f"item index {max(positions)} is outside the table")
    return positions, pos


def _check_step(
    pre: Sequence[tuple[bytes, V]], post: Sequence[tuple[bytes, V]], absent: object
) -> None:
    """Pre keys sorted and distinct; post items present values (not ``absent``) of keys the step
    accessed, sorted and distinct (:class:`TraceIncomplete` otherwise). Plain loops: steps hold a
    few keys each, and a block's trace thousands of steps."""
    previous = b""
    for key, _ in pre:
        if key <= previous:
            raise TraceIncomplete("a step's accessed keys are not sorted and distinct")
        previous = key
    if post:
        known = dict(pre)
        previous = b""
        for key, item in post:
            if key not in known or item == absent:
                raise TraceIncomplete("a step changes a key it did not access")
            if key <= previous:
                raise TraceIncomplete("a step's changed keys are not sorted and distinct")
            previous = key


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The minimal unsigned LEB128 varint of at most 64 bits at ``pos`` in ``data``, and the
    offset after it (the codec's rules; IndexError where the input ends)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise NonCanonicalInteger("varint has a redundant trailing zero group")
            if value >> 64:
                raise OversizeField("integer does not fit in 64 bits")
            return value, pos
    raise OversizeField("varint longer than 10 bytes")


def _value_bytes(value: bytes | None) -> bytes:
    """A value in a :class:`BlockTrace` item: u8 present, then its varbytes."""
    if value is None:
        return b"\x00"
    if len(value) > MAX_VALUE_SIZE:
        raise OversizeField(f"{len(value)} bytes exceed the bound of {MAX_VALUE_SIZE}")
    return b"\x01" + _varint_bytes(len(value)) + value


def _parse_value(data: bytes, pos: int) -> tuple[bytes | None, int]:
    present = data[pos]
    if present > 1:
        raise TraceIncomplete(f"presence flag must be 0 or 1, got {present}")
    if not present:
        return None, pos + 1
    size, pos = _varint(data, pos + 1)
    if size > MAX_VALUE_SIZE:
        raise OversizeField(f"length {size} exceeds the bound of {MAX_VALUE_SIZE}")
    return _take(data, pos, size)


def _ref_bytes(ref: ValueRef) -> bytes:
    """A reference in a :class:`TraceSummary` item: its own encoding (checked: a summary may be
    built by hand)."""
    return parse_ref(ref)


def _parse_ref(data: bytes, pos: int) -> tuple[ValueRef, int]:
    """The reference at ``pos`` of ``data`` and the offset after it (IndexError where the input
    ends)."""
    tag = data[pos]
    if tag == REF_VALUE:
        size = data[pos + 1]  # a one-byte varint: any other is over the bound
        if size > MAX_INLINE_VALUE:
            raise OversizeField(f"an inline value is at most {MAX_INLINE_VALUE} bytes")
        end = pos + 2 + size
    elif tag == REF_HASH:
        end = pos + 1 + HASH_SIZE
    elif tag == REF_ABSENT:
        return ABSENT_REF, pos + 1
    else:
        raise TraceIncomplete(f"value reference tag must be 0, 1 or 2, got {tag}")
    if end > len(data):
        raise IndexError("input ends")
    return ValueRef(data[pos:end]), end


def _first_access(steps: Iterable[StepAccess | StepSummary]) -> list[bytes]:
    """Every key the steps accessed, in first-access order."""
    seen: dict[bytes, None] = {}
    for step in steps:
        for key, _ in step.pre:
            seen.setdefault(key)
    return list(seen)


def union_keys(steps: Iterable[StepAccess]) -> list[bytes]:
    """Every key the steps accessed, in first-access order."""
    return _first_access(steps)
