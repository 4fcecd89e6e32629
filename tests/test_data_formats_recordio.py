"""RecordIO .rec/.idx: exact round trip (headers, labels, split records), the source, bad offsets."""

import struct

import numpy as np
import pytest

from jaxforget.data.formats import recordio
from jaxforget.data.formats.recordio import RecordIOSource
from jaxforget.data.source import DataError
from tests.data_fixtures import encode, random_image


def test_recordio_round_trip_exact(tmp_path):
    """An InsightFace-style pack written per docs/FORMATS.md reads back exactly (headers, labels, bytes)."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(5)]
    labels = [3, 3, 7, 7, 9]
    payload_imgs = [encode(im, "PNG") for im in imgs]
    # Force one payload to contain the magic word at an aligned offset (split into parts).
    magic = struct.pack("<I", recordio.MAGIC)
    tricky = b"\x00" * 8 + magic + b"tail-bytes"
    records = [(0, recordio.pack_payload([6.0, 9.0], b""))]
    records += [(k + 1, recordio.pack_payload(float(labels[k]), payload_imgs[k], record_id=k + 1)) for k in range(5)]
    records += [(6, recordio.pack_payload([1.0, 3.0], b"")), (7, recordio.pack_payload(0.0, tricky))]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    recordio.write_recordio(rec, idx, records)

    # Byte layout of the first record: magic, length word, 24-byte header + 2 labels, padding.
    raw = rec.read_bytes()
    assert struct.unpack_from("<II", raw, 0) == (recordio.MAGIC, 24 + 8)
    reader = recordio.RecordIOReader(rec, idx)
    assert reader.read_key(7) == recordio.pack_payload(0.0, tricky)  # split record rejoined
    for key, payload in records:
        assert reader.read_key(key) == payload
    lab, data, rid, _ = recordio.unpack_payload(reader.read_key(2))
    assert lab == 3.0 and rid == 2 and data == payload_imgs[1]

    src = RecordIOSource(str(rec), str(idx), output_size=(112, 112))
    assert len(src) == 5 and src.identities.tolist() == labels
    for k in range(5):
        np.testing.assert_array_equal(src[k]["image"], imgs[k])
    # The .idx beside the .rec is found by default; aligned 112x112 faces crop to 112x96 (x - 8).
    narrow = RecordIOSource(str(rec), output_size=(112, 96))[0]["image"]
    np.testing.assert_array_equal(narrow, imgs[0][:, 8:104])

    idx.write_text("0\t4\n")
    with pytest.raises(recordio.RecordIOError, match="bad magic"):
        recordio.RecordIOReader(rec, idx).read_key(0)


def _pack(tmp_path, records, idx_text=None):
    rec, idx = tmp_path / "p.rec", tmp_path / "p.idx"
    recordio.write_recordio(rec, idx, records)
    if idx_text is not None:
        idx.write_bytes(idx_text)
    return str(rec), str(idx)


def test_bad_index_files_name_the_file(tmp_path):
    """Before (found by tests/test_fuzz_*.py): a non-ASCII .idx escaped as
    UnicodeDecodeError, a number past 64 bits as OverflowError, and an offset near 2**63
    overflowed the bounds check (offset + 8 wrapped) and passed it."""
    records = [(1, recordio.pack_payload(3.0, encode(random_image(0, (16, 16)), "PNG")))]
    for idx_text, message in [
        (b"\x80\t0\n", r"p\.idx: line 1 is not two integers"),
        (b"1\t18446744073709551616\n", r"p\.idx: line 1: key or offset out of the 64-bit range"),
        (b"1\t9223372036854775807\n", r"p\.idx: offset 9223372036854775807 of key 1 is outside .*p\.rec"),
    ]:
        rec, idx = _pack(tmp_path, records, idx_text)
        with pytest.raises(recordio.RecordIOError, match=message):
            RecordIOSource(rec, idx)
    assert issubclass(recordio.RecordIOError, DataError)  # the runner turns DataError into one line


def test_bad_header_records_and_labels_name_the_file(tmp_path):
    """Before: a short header record's error did not name the file, a NaN end-of-images label
    escaped as ValueError, and NaN or fractional identity labels were cast to arbitrary ints."""
    img = encode(random_image(0, (16, 16)), "PNG")
    rec, idx = _pack(tmp_path, [(0, b"short"), (1, recordio.pack_payload(3.0, img))])
    with pytest.raises(recordio.RecordIOError, match=r"p\.rec key 0: payload of 5 bytes is shorter than the 24-byte header"):
        RecordIOSource(rec, idx)
    rec, idx = _pack(tmp_path, [(0, recordio.pack_payload([float("nan"), 3.0], b"")), (1, recordio.pack_payload(3.0, img))])
    with pytest.raises(recordio.RecordIOError, match=r"p\.rec key 0: the header record names nan"):
        RecordIOSource(rec, idx)
    for label in (float("nan"), 3.5, 1e30):
        rec, idx = _pack(tmp_path, [(1, recordio.pack_payload(3.0, img)), (2, recordio.pack_payload(label, img))])
        with pytest.raises(recordio.RecordIOError, match=r"p\.rec key 2: label .* is not an integer identity"):
            RecordIOSource(rec, idx)
