"""Small image fixtures shared by the data tests (``tests/test_data_*.py``)."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(arr, fmt="JPEG", quality=95):
    """``arr`` (uint8 image) encoded as ``fmt`` bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def random_image(seed, hw=(109, 89)):
    """A seeded random uint8 RGB image of height/width ``hw``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, hw + (3,), dtype=np.uint8)


def check_record(rec, size):
    """``rec`` follows the record contract at output size ``size``."""
    assert set(rec) >= {"image", "identity", "image_id"}
    assert rec["image"].shape == size + (3,) and rec["image"].dtype == np.uint8
    assert isinstance(rec["image_id"], str)


def cfp_tree(tmp_path):
    """A CFP tree: two people x (2 frontal + 1 profile) PNGs, landmarks for all but 002's
    profile, and a Protocol/ with two FP and two FF folds. Returns (images by id, frontal ids,
    profile ids)."""
    images = {}
    for ident in ("001", "002"):
        for pose, n in (("frontal", 2), ("profile", 1)):
            d = tmp_path / "Data" / "Images" / ident / pose
            d.mkdir(parents=True)
            for k in range(n):
                img = random_image(int(ident) * 10 + k + (pose == "profile") * 5, (80, 70))
                (d / f"{k + 1:02d}.png").write_bytes(encode(img, "PNG"))
                images[f"{ident}/{pose}/{k + 1:02d}"] = img
    lm = "20 30 50 30 35 45 24 60 46 60"
    rows = [f"{i}.png {lm} {i[:3]} hog 1" for i in sorted(images) if i != "002/profile/01"]
    rows[0] = "001/frontal/01.png -3 30 50 30 35 45 -1 60 46 60 001 cnn 1"  # a guessed hidden eye
    (tmp_path / "landmarks_5pt.txt").write_text("image lefteye_x ... faces_found\n" + "\n".join(rows) + "\n")
    proto = tmp_path / "Protocol"
    proto.mkdir()
    frontal = [i for i in sorted(images) if "frontal" in i]
    profile = [i for i in sorted(images) if "profile" in i]
    for name, ids in (("F", frontal), ("P", profile)):
        (proto / f"Pair_list_{name}.txt").write_text(
            "".join(f"{k + 1} ../Data/Images/{i}.png\n" for k, i in enumerate(ids)))
    folds = {"FP": (("01", "1,1\n2,1\n", "1,2\n"), ("02", "4,2\n", "3,1\n2,2\n")),
             "FF": (("01", "1,2\n", "1,3\n"), ("02", "3,4\n", "2,4\n"))}
    for protocol, rows in folds.items():
        for fold, same, diff in rows:
            (proto / "Split" / protocol / fold).mkdir(parents=True, exist_ok=True)
            (proto / "Split" / protocol / fold / "same.txt").write_text(same)
            (proto / "Split" / protocol / fold / "diff.txt").write_text(diff)
    return images, frontal, profile


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels and holds none (a decompression bomb's head)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
