"""RecordIO .rec/.idx: exact round trip (headers, labels, split records), the source, bad offsets."""

import struct

import numpy as np
import pytest

from jaxforget.data.formats import recordio
from jaxforget.data.formats.recordio import RecordIOSource
from tests.data_fixtures import encode


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
