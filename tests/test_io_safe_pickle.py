"""The restricted unpickler: only allow-listed globals are resolved, anything else is refused with
the file's name before it runs; persistent ids need a resolver; one pickle per call."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tracemalloc
import types

import pytest

from jaxforget.io.safe_pickle import UnsafePickleError, restricted_load
from jaxforget.testing.payloads import CodeRunningPayload

ORDERED = {("collections", "OrderedDict"): collections.OrderedDict}


def test_payload_really_runs_under_plain_pickle(tmp_path):
    """Control: the crafted pickle does execute code when loaded without restrictions."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"conv1.weight": CodeRunningPayload(marker)}))
    assert marker.exists()


def test_unlisted_global_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps(collections.OrderedDict(a=1, b=CodeRunningPayload(marker)), protocol=2)
    with pytest.raises(UnsafePickleError, match=r"^evil\.pkl: refused to load: the pickle references "
                       r"`(posix|os|nt)\.system`, which is not a container\. Unpickling it could run "
                       r"arbitrary code, so nothing was executed\. Ask the sender\.$"):
        restricted_load(io.BytesIO(raw), ORDERED, "evil.pkl", expected="a container", advice="Ask the sender.")
    assert not marker.exists(), "the pickle's code ran"
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)  # callers catching pickle errors see it


def test_allowed_globals_resolve_and_can_check_their_arguments():
    raw = pickle.dumps(collections.OrderedDict(a=[1, 2], b=(3.5, b"x")), protocol=4)
    got = restricted_load(io.BytesIO(raw), ORDERED, "ok.pkl")
    assert type(got) is collections.OrderedDict and got == {"a": [1, 2], "b": (3.5, b"x")}

    def refusing(*args):
        raise pickle.UnpicklingError(f"refusing {args!r}")

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_load(io.BytesIO(raw), {("collections", "OrderedDict"): refusing}, "ok.pkl")
    # Without the allow-list entry even a harmless container is refused.
    with pytest.raises(UnsafePickleError, match=r"ok\.pkl: .*`collections\.OrderedDict`, which is not an allowed type"):
        restricted_load(io.BytesIO(raw), {}, "ok.pkl")


class _Persistent(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", obj[len("ref:"):]) if isinstance(obj, str) and obj.startswith("ref:") else None


def test_persistent_ids_need_a_resolver():
    buf = io.BytesIO()
    _Persistent(buf, protocol=2).dump(["ref:a", 1])
    raw = buf.getvalue()
    with pytest.raises(UnsafePickleError, match=r"p\.pkl: unexpected persistent id \('storage', 'a'\)"):
        restricted_load(io.BytesIO(raw), {}, "p.pkl")
    seen = []
    got = restricted_load(io.BytesIO(raw), {}, "p.pkl", persistent_load=lambda pid: seen.append(pid) or "resolved")
    assert got == ["resolved", 1] and seen == [("storage", "a")]


def test_one_pickle_per_call_and_bytes_encoding():
    stream = io.BytesIO(pickle.dumps(1, protocol=2) + pickle.dumps({"k": 2}, protocol=2))
    assert restricted_load(stream, {}, "s") == 1
    assert restricted_load(stream, {}, "s") == {"k": 2}
    # A Python 2 str (protocol 0/2 SHORT_BINSTRING) stays bytes with encoding='bytes'.
    py2_str = b"\x80\x02U\x03abcq\x00."
    assert restricted_load(io.BytesIO(py2_str), {}, "s", encoding="bytes") == b"abc"
    assert restricted_load(io.BytesIO(py2_str), {}, "s") == "abc"


# ------------------------------------------------------------------------------------------------
# Hostile pickles that run no code but would exhaust memory or change the reader (found by
# tests/test_fuzz_*.py)


def _peak_bytes(load):
    tracemalloc.start()
    try:
        result = load()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_memo_index_and_bytearray_length_allocate_nothing():
    """Before: the C unpickler grew its memo table to the index a 9-byte pickle names (2**31
    entries: 32 GiB, zeroed) and allocated a BYTEARRAY8's declared length up front."""
    memo = b"\x80\x02N" + b"r" + struct.pack("<I", 0x7FFFFFF0) + b"."  # None; LONG_BINPUT 2**31 - 16
    got, peak = _peak_bytes(lambda: restricted_load(io.BytesIO(memo), {}, "memo.pkl"))
    assert got is None and peak < 1 << 20
    bytearray8 = b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc."
    with pytest.raises(pickle.UnpicklingError, match=r"big\.pkl: pickle data was truncated \(a bytearray of 1099511627776 bytes\)"):
        _peak_bytes(lambda: restricted_load(io.BytesIO(bytearray8), {}, "big.pkl"))
    small = pickle.dumps(bytearray(b"abc"), protocol=5)
    assert restricted_load(io.BytesIO(small), {}, "s") == bytearray(b"abc")


def test_build_on_an_allowed_global_is_refused():
    """Before: BUILD set attributes on the allow-listed object itself, changing how every later
    file is read (e.g. which dtype a storage type stands for)."""
    shared = types.SimpleNamespace(name="FloatStorage")
    raw = b"\x80\x02cm\nStorage\n}X\x04\x00\x00\x00nameX\x04\x00\x00\x00Bytesb."  # BUILD {'name': 'Byte'}
    with pytest.raises(UnsafePickleError, match=r"b\.pkl: refused to load: the pickle sets attributes on the allowed global"):
        restricted_load(io.BytesIO(raw), {("m", "Storage"): shared}, "b.pkl")
    assert shared.name == "FloatStorage"
    # BUILD on an object the pickle made (an OrderedDict's attributes, as torch state_dicts have) works.
    od = collections.OrderedDict(a=1)
    od.meta = {"v": 2}
    got = restricted_load(io.BytesIO(pickle.dumps(od, protocol=2)), ORDERED, "od.pkl")
    assert got == od and got.meta == {"v": 2}


def test_unsafe_pickle_error_is_a_value_error():
    """Callers that turn bad input into one-line errors catch ValueError (the runner's model.init)."""
    assert issubclass(UnsafePickleError, ValueError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
