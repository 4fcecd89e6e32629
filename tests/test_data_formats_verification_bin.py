"""InsightFace .bin verification packs: real lfw_small.bin, round trip, the restricted unpickler."""

import os
import pickle

import numpy as np
import pytest

from jaxforget.data.formats.verification_bin import VerificationBinSource, load_verification_bin
from jaxforget.data.source import DataError
from tests.data_fixtures import check_record, encode, random_image


@pytest.mark.real_data
def test_real_lfw_small_bin(shared):
    src = VerificationBinSource(str(shared("data", "lfw_small.bin")), output_size=(112, 112))
    assert len(src) == 20 and src.pairs.shape == (10, 2) and src.issame.shape == (10,)
    assert src.issame.dtype == bool
    np.testing.assert_array_equal(src.pairs[:, 1] - src.pairs[:, 0], 1)
    full = src[0]["image"]
    check_record(src[0], (112, 112))
    narrow = VerificationBinSource(str(shared("data", "lfw_small.bin")), output_size=(112, 96))[0]["image"]
    np.testing.assert_array_equal(narrow, full[:, 8:104])  # the x - 8 template crop


def test_verification_bin_round_trip_and_restricted_unpickler(tmp_path):
    imgs = [random_image(k, (112, 112)) for k in range(4)]
    bins = [np.frombuffer(encode(im, "PNG"), np.uint8) for im in imgs]  # lossless, as uint8 arrays
    path = tmp_path / "mini.bin"
    path.write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    src = VerificationBinSource(str(path), output_size=(112, 112))
    assert len(src) == 4 and src.issame.tolist() == [True, False]
    for k in range(4):
        np.testing.assert_array_equal(src[k]["image"], imgs[k])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(DataError, match=r"evil.bin: refused to load.*system.*nothing was executed"):
        load_verification_bin(str(bad))
    floats = tmp_path / "floats.bin"  # allowed globals still check their arguments
    floats.write_bytes(pickle.dumps(([np.zeros(3, np.float64)] * 2, [True]), protocol=2))
    with pytest.raises(DataError, match="only uint8 arrays are allowed"):
        load_verification_bin(str(floats))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        load_verification_bin(str(odd))


def test_wrong_typed_pairs_name_the_file(tmp_path):
    """Before: a pickle whose bins or issame_list was not a list escaped as TypeError (found by
    tests/test_fuzz_*.py)."""
    for k, obj in enumerate([(None, []), ([b"a", b"b"], 3), ([b"a", b"b"], [[True]]), (b"ab", [True])]):
        path = tmp_path / f"typed{k}.bin"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(DataError, match=rf"typed{k}\.bin: "):
            load_verification_bin(str(path))


def test_array_shape_in_the_pickle_is_not_allocated(tmp_path):
    """numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` then BUILD; before, a
    hostile shape there (2**40 bytes) was allocated and failed with MemoryError."""
    arr = np.frombuffer(encode(random_image(0, (16, 16)), "PNG"), np.uint8)
    raw = pickle.dumps(([arr, arr], [True]), protocol=2)
    assert raw.count(b"K\x00\x85") == 1  # the (0,) shape: BININT1 0, TUPLE1 (once, memoised)
    path = tmp_path / "shape.bin"
    path.write_bytes(raw.replace(b"K\x00\x85", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85"))
    images, issame = load_verification_bin(str(path))
    assert images == [arr.tobytes()] * 2 and issame.tolist() == [True]
