"""The bad-input property shared by the reader fuzz tests (``tests/test_fuzz_*.py``).

A reader given a truncated, bit-flipped, wrong-typed or hostile file either reads it (a mutation
may leave a valid file) or raises its own error naming the file, within a time bound, and never
runs code from the file. :func:`check_reader` asserts that; :func:`mutated` and :func:`text_mutated`
derive bad files from a valid one; :data:`SETTINGS` bounds every example.

``HYPOTHESIS_PROFILE=deep`` runs 20 times more examples, randomised (the default is
derandomised, so CI is reproducible).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import pickle
import signal
import struct
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jaxforget.testing.payloads import CodeRunningPayload

DEEP = os.environ.get("HYPOTHESIS_PROFILE", "") == "deep"
#: Seconds one reader call may take before it counts as a hang.
TIME_LIMIT_S = 10.0


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings of one reader's fuzz test: ``max_examples`` (x20 when deep)."""
    return settings(
        max_examples=max_examples * (20 if DEEP else 1),
        derandomize=not DEEP,
        deadline=None,  # the hang bound is time_limit's, per call, not hypothesis's timing
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Hang(BaseException):
    """A reader call ran past :data:`TIME_LIMIT_S` (BaseException: no ``except Exception`` eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT_S):
    """Raises :class:`Hang` in the block after ``seconds`` of wall time (main thread, POSIX)."""

    def on_alarm(signum, frame):
        raise Hang(f"reader call ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_reader(call: Callable[[], Any], names: tuple[str, ...], errors: tuple[type, ...]) -> tuple[Any, Any]:
    """Runs ``call`` under :func:`time_limit`; returns ``(result, None)``, or ``(None, error)`` when
    it raised one of ``errors`` whose message holds one of ``names`` (the file's path). Any other
    exception (a traceback for the user) propagates and fails the test."""
    try:
        with time_limit():
            return call(), None
    except Hang as e:  # out of the reader now: an AssertionError lets hypothesis shrink the file
        raise AssertionError(f"{names[0]}: {e}") from None
    except errors as e:
        message = str(e)
        assert any(n in message for n in names), f"{type(e).__name__} does not name {names}: {message}"
        return None, e


class Seeds(tuple):
    """Valid files to mutate, shown short in hypothesis's reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


def fresh_marker(folder: pathlib.Path) -> pathlib.Path:
    """The file :data:`PAYLOAD` creates if its code runs, made absent."""
    marker = folder / "code_ran"
    marker.unlink(missing_ok=True)
    return marker


# ------------------------------------------------------------------------------------------------
# Bad files from good ones

#: Words that make a length, count or offset field absurd when written over one.
HOSTILE_WORDS = (
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x80",
    struct.pack("<Q", 2**63 - 1),
    struct.pack("<q", -1),
    struct.pack(">I", 0x7FFFFFFF),
    b"\x00\x00\x00\x00",
)


def mutated(seed: bytes, max_insert: int = 64) -> st.SearchStrategy[bytes]:
    """Bad variants of ``seed``: truncated, bit-flipped, overwritten (random bytes or a hostile
    length word), with bytes inserted, or replaced by junk."""
    n = len(seed)

    def flip(spots):
        b = bytearray(seed)
        for at, bit in spots:
            b[at % n] ^= 1 << bit
        return bytes(b)

    def overwrite(args):
        at, data = args
        return seed[:at] + data + seed[at + len(data):]

    def insert(args):
        at, data = args
        return seed[:at] + data + seed[at:]

    spot = st.integers(0, max(n - 1, 0))
    return st.one_of(
        spot.map(lambda k: seed[:k]),
        st.lists(st.tuples(spot, st.integers(0, 7)), min_size=1, max_size=8).map(flip),
        st.tuples(spot, st.binary(min_size=1, max_size=16) | st.sampled_from(HOSTILE_WORDS)).map(overwrite),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=max_insert)).map(insert),
        st.binary(max_size=4 * max_insert),
    )


#: Tokens that are wrong in a field of a text file (numbers out of range, not numbers, odd text).
HOSTILE_TOKENS = (
    "nan", "inf", "-inf", "1e400", "-1", "0", "-0.0", "1e308", "9" * 30, "0x10", "1_000", "",
    "\u0663", "é", "\x00", '"', ",", "\t", "a,b", "[]", "{}", "null", "true", "1.5",
)


def text_mutated(seed: str) -> st.SearchStrategy[bytes]:
    """Bad variants of a text file ``seed``: :func:`mutated` bytes, or a token of
    :data:`HOSTILE_TOKENS` (or random text) put in place of one whitespace/comma separated
    field, or a line dropped or repeated."""
    lines = seed.splitlines()

    def replace_field(args):
        line, field, token = args
        ls = list(lines)
        k = line % len(ls)
        parts = ls[k].replace(",", " , ").split(" ")
        parts[field % len(parts)] = token
        ls[k] = " ".join(parts).replace(" , ", ",")
        return "\n".join(ls).encode("utf-8", "surrogatepass")

    def drop_or_repeat(args):
        line, repeat = args
        ls = list(lines)
        k = line % len(ls)
        ls[k:k + 1] = [ls[k]] * (2 if repeat else 0)
        return "\n".join(ls).encode("utf-8")

    token = st.sampled_from(HOSTILE_TOKENS) | st.text(max_size=8)
    spot = st.integers(0, 1000)
    return st.one_of(
        mutated(seed.encode("utf-8")),
        st.tuples(spot, spot, token).map(replace_field),
        st.tuples(spot, st.booleans()).map(drop_or_repeat),
    )


# ------------------------------------------------------------------------------------------------
# Hostile pickles: trees of calls to allowed (and refused) globals with wrong-typed arguments


@dataclasses.dataclass(frozen=True)
class Global:
    """A global the pickle names (``GLOBAL module name``)."""

    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    """``func(*args)`` in the pickle (``REDUCE``)."""

    func: Global
    args: tuple


@dataclasses.dataclass(frozen=True)
class Build:
    """``obj`` with ``state`` applied (``BUILD``: ``__setstate__`` or ``__dict__`` update)."""

    obj: Any
    state: Any


@dataclasses.dataclass(frozen=True)
class PersistentId:
    """A persistent id (``BINPERSID``), how PyTorch files name their storages."""

    pid: Any


#: Stands for :class:`jaxforget.testing.payloads.CodeRunningPayload` (its marker is known only
#: when the pickle is written).
PAYLOAD = Global("<payload>", "<payload>")

#: Globals no reader allows, harmless if one were called by mistake (the payload is the test of
#: code execution).
REFUSED_GLOBALS = (("builtins", "getattr"), ("builtins", "len"), ("collections", "Counter"))

#: Integers that make a size, count, offset or index absurd.
HOSTILE_INTS = (0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**40, 2**63 - 1, 2**64, -(2**63))


def _emit(node: Any, marker: pathlib.Path) -> bytes:
    if node == PAYLOAD:
        return pickle.dumps(CodeRunningPayload(marker), protocol=2)[2:-1]
    if isinstance(node, Global):
        return b"c" + f"{node.module}\n{node.name}\n".encode()
    if isinstance(node, Call):
        return _emit(node.func, marker) + _emit(tuple(node.args), marker) + b"R"
    if isinstance(node, Build):
        return _emit(node.obj, marker) + _emit(node.state, marker) + b"b"
    if isinstance(node, PersistentId):
        return _emit(node.pid, marker) + b"Q"
    if isinstance(node, list):
        return b"]" + (b"(" + b"".join(_emit(v, marker) for v in node) + b"e" if node else b"")
    if isinstance(node, tuple):
        return b"(" + b"".join(_emit(v, marker) for v in node) + b"t"
    if isinstance(node, dict):
        items = b"".join(_emit(k, marker) + _emit(v, marker) for k, v in node.items())
        return b"}" + (b"(" + items + b"u" if node else b"")
    return pickle.dumps(node, protocol=2)[2:-1]


def to_pickle(tree: Any, marker: pathlib.Path) -> bytes:
    """Protocol-2 pickle of ``tree`` (plain values and the nodes above), with :data:`PAYLOAD`
    written as a pickle that runs ``touch marker``."""
    return b"\x80\x02" + _emit(tree, marker) + b"."


def pickle_trees(allowed: tuple[tuple[str, str], ...], max_leaves: int = 24) -> st.SearchStrategy[Any]:
    """Trees of plain values, lists, tuples, dicts, calls to ``allowed`` (and refused) globals with
    any arguments, ``BUILD`` s, persistent ids and :data:`PAYLOAD`."""
    names = st.sampled_from(tuple(allowed) + REFUSED_GLOBALS).map(lambda mn: Global(*mn))
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(HOSTILE_INTS),
        st.floats(), st.text(max_size=8), st.binary(max_size=16), names, st.just(PAYLOAD),
    )

    def extend(children):
        return st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=6).map(tuple),
            st.dictionaries(st.text(max_size=6), children, max_size=4),
            st.tuples(names, st.lists(children, max_size=6)).map(lambda a: Call(a[0], tuple(a[1]))),
            st.tuples(children, children).map(lambda a: Build(*a)),
            children.map(PersistentId),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


def contains_payload(tree: Any) -> bool:
    """Whether :func:`to_pickle` writes a :data:`PAYLOAD` for ``tree``."""
    if tree == PAYLOAD:
        return True
    if isinstance(tree, (list, tuple)):
        return any(contains_payload(v) for v in tree)
    if isinstance(tree, dict):
        return any(contains_payload(k) or contains_payload(v) for k, v in tree.items())
    if isinstance(tree, Call):
        return contains_payload(tree.args)
    if isinstance(tree, Build):
        return contains_payload(tree.obj) or contains_payload(tree.state)
    if isinstance(tree, PersistentId):
        return contains_payload(tree.pid)
    return False


# ------------------------------------------------------------------------------------------------
# JSON files

#: Any JSON value, nested a little.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from(HOSTILE_INTS)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
    max_leaves=12,
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


def _replaced(tree: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    if delete and len(path) == 1:
        del copy[path[0]]
    else:
        copy[path[0]] = _replaced(copy[path[0]], path[1:], value, delete)
    return copy


def json_mutated(obj: Any) -> st.SearchStrategy[bytes]:
    """Bad variants of the JSON file of ``obj``: its text mutated (:func:`text_mutated`), one
    value anywhere in it replaced by any JSON value or deleted, or absurdly deep nesting."""
    paths = _paths(obj)

    def replace(args):
        k, value, delete = args
        return json.dumps(_replaced(obj, paths[k % len(paths)], value, delete)).encode()

    return st.one_of(
        text_mutated(json.dumps(obj, indent=1)),
        st.tuples(st.integers(0, 10**6), JSON_VALUES, st.booleans()).map(replace),
        st.sampled_from([b"[" * 100_000, b'{"a":' * 100_000]),
    )
