"""Bad input for the data readers: InsightFace ``.bin``, ``.rec`` / ``.idx``, the CelebA,
VGGFace2, CFP and CelebA-wild annotation files, the five-point landmarks file of
``python -m jaxforget.align``, images (through a source's decoding) and a run's ``split.json``.
The property, the bad files and the example counts are ``tests/fuzz_fixtures.py``'s; the
regression test of each fix found here lives in the reader's own test file.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxforget.data.align_photos import format_landmarks, read_landmarks
from jaxforget.data.formats import recordio
from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.formats.celeba_wild import CelebAWildSource
from jaxforget.data.formats.cfp import CFPSource, read_cfp_pairs
from jaxforget.data.formats.folder import FolderSource
from jaxforget.data.formats.recordio import RecordIOSource
from jaxforget.data.formats.verification_bin import BIN_ALLOWED, VerificationBinSource
from jaxforget.data.formats.vggface2 import VGGFace2Source
from jaxforget.data.source import CorruptImageError, DataError
from jaxforget.data.splits import Split, SplitError, make_split
from tests.data_fixtures import cfp_tree, encode, random_image
from tests.fuzz_fixtures import (
    HOSTILE_INTS,
    Seeds,
    check_reader,
    contains_payload,
    fresh_marker,
    fuzz_settings,
    json_mutated,
    mutated,
    pickle_trees,
    text_mutated,
    to_pickle,
)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# InsightFace .bin verification packs


@pytest.fixture(scope="module")
def bin_seeds():
    imgs = [encode(random_image(k, (16, 16)), fmt) for k, fmt in enumerate(["JPEG", "PNG", "JPEG", "PNG"])]
    as_arrays = [np.frombuffer(b, np.uint8) for b in imgs]
    return Seeds([pickle.dumps((imgs, [True, False]), protocol=2), pickle.dumps((as_arrays, [False, True]), protocol=4)])


def _read_bin(path):
    src = VerificationBinSource(str(path), output_size=(16, 16), strict=True)
    return [src[i] for i in range(len(src))]


@fuzz_settings(150)
@given(data=st.data())
def test_verification_bin_mutated(work, bin_seeds, data):
    path = work / "fuzzed.bin"
    path.write_bytes(data.draw(mutated(data.draw(st.sampled_from(bin_seeds)))))
    check_reader(lambda: _read_bin(path), (str(path),), (DataError,))


@fuzz_settings(150)
@given(tree=pickle_trees(tuple(BIN_ALLOWED)) | st.tuples(pickle_trees(tuple(BIN_ALLOWED)), st.lists(st.booleans())))
def test_verification_bin_hostile_pickles(work, tree):
    marker = fresh_marker(work)
    path = work / "hostile.bin"
    path.write_bytes(to_pickle(tree, marker))
    _, error = check_reader(lambda: _read_bin(path), (str(path),), (DataError,))
    assert not marker.exists(), "the .bin's code ran"
    assert error is not None or not contains_payload(tree)


# ------------------------------------------------------------------------------------------------
# MXNet RecordIO packs


@pytest.fixture(scope="module")
def recordio_seed(work):
    """A pack of three 16x16 images behind an InsightFace header record; key 2's payload holds
    the magic word (a record split in parts)."""
    imgs = [encode(random_image(k, (16, 16)), fmt) for k, fmt in enumerate(["JPEG", "PNG", "JPEG"])]
    records = [(0, recordio.pack_payload([4.0, 6.0], b""))]
    records += [(k + 1, recordio.pack_payload(float(3 + k % 2), im, record_id=recordio.MAGIC if k == 1 else k))
                for k, im in enumerate(imgs)]
    rec, idx = work / "seed.rec", work / "seed.idx"
    recordio.write_recordio(rec, idx, records)
    return Seeds([rec.read_bytes(), idx.read_text()])


def _read_recordio(rec, idx):
    src = RecordIOSource(str(rec), str(idx), output_size=(16, 16), strict=True)
    return [src[i] for i in range(len(src))]


@fuzz_settings(150)
@given(data=st.data())
def test_recordio_mutated(work, recordio_seed, data):
    rec_bytes, idx_text = recordio_seed
    rec, idx = work / "fuzzed.rec", work / "fuzzed.idx"
    rec.write_bytes(rec_bytes)
    idx.write_text(idx_text)
    if data.draw(st.booleans()):
        rec.write_bytes(data.draw(mutated(rec_bytes)))
    else:
        idx.write_bytes(data.draw(text_mutated(idx_text)))
    check_reader(lambda: _read_recordio(rec, idx), (str(rec), str(idx)), (DataError,))


_FLOAT32 = st.floats(width=32) | st.sampled_from([float("nan"), float("inf"), 1e30, -1.0, 2.0**31, 0.5])
_RECORD = st.tuples(
    st.sampled_from([0, 1, 2, 3, 4, 7]),  # continuation flag
    st.sampled_from([0, 4, 24, 2**29 - 1]) | st.integers(0, 64),  # declared length when not the real one
    st.booleans(),  # use the declared length instead of the real one
    st.sampled_from([0, 1, 2, 2**31, 2**32 - 1]),  # header flag (number of labels)
    st.lists(_FLOAT32, max_size=3),
    st.binary(max_size=24),
)


def _raw_record(cflag, declared, lie, flag, labels, body):
    payload = struct.pack("<IfQQ", flag, labels[0] if labels else 0.0, 0, 0)
    payload += np.asarray(labels, np.float32).tobytes() + body
    length = declared if lie else len(payload)
    return struct.pack("<II", recordio.MAGIC, (cflag << 29) | length) + payload + bytes(-len(payload) % 4)


@fuzz_settings(150)
@given(
    records=st.lists(_RECORD, min_size=1, max_size=4),
    keys=st.lists(st.sampled_from(HOSTILE_INTS) | st.integers(0, 5), min_size=1, max_size=4),
    offsets=st.none() | st.lists(st.sampled_from(HOSTILE_INTS) | st.integers(0, 200), min_size=1, max_size=4),
)
def test_recordio_hostile_headers(work, records, keys, offsets):
    """Headers with absurd lengths, label counts, NaN / huge labels, bad continuation flags, and
    index files with absurd keys and offsets."""
    parts = [_raw_record(*r) for r in records]
    starts = np.cumsum([0] + [len(p) for p in parts])[:-1].tolist()
    offsets = starts if offsets is None else offsets
    rec, idx = work / "hostile.rec", work / "hostile.idx"
    rec.write_bytes(b"".join(parts))
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets)))
    check_reader(lambda: _read_recordio(rec, idx), (str(rec), str(idx)), (DataError,))


# ------------------------------------------------------------------------------------------------
# Annotation files: CelebA identities and landmarks, VGGFace2 landmark and box CSVs


def _decode_all(src):
    return [src[i] for i in range(len(src))]


def _write_one_mutated(data, folder, files) -> str:
    """Writes the seed ``files`` ((name, text) pairs) under ``folder``, one of them mutated;
    returns that one's name."""
    name, text = data.draw(st.sampled_from(files))
    for n, t in files:
        (folder / n).write_text(t)
    (folder / name).write_bytes(data.draw(text_mutated(text)))
    return name


_LM = "34.5 54.5 53.0 56.5 38.5 71.0 36.5 76.0 54.0 77.0".split()


@pytest.fixture(scope="module")
def celeba_root(work):
    root = work / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{k + 1:06d}.jpg" for k in range(3)]
    for k, name in enumerate(names):
        (root / "img_align_celeba" / name).write_bytes(encode(random_image(k)))
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    files = {
        "identity_CelebA.txt": "".join(f"{nm} {100 + k % 2}\n" for k, nm in enumerate(names)),
        "list_landmarks_align_celeba.txt": "\n".join(["3", header] + [f"{nm} {' '.join(_LM)}" for nm in names]) + "\n",
        "list_landmarks_align_celeba.csv": "\n".join(
            ["image_id," + header.replace(" ", ",")] + [f"{nm},{','.join(_LM)}" for nm in names]) + "\n",
    }
    return root, Seeds(files.items())


@fuzz_settings(150)
@given(data=st.data())
def test_celeba_annotations_mutated(celeba_root, data):
    root, files = celeba_root
    name = _write_one_mutated(data, root, files)
    lm_name = name if name != "identity_CelebA.txt" else "list_landmarks_align_celeba.txt"
    paths = (str(root / name), str(root / lm_name), str(root / "img_align_celeba" / ""))
    src = lambda: _decode_all(CelebASource(str(root), (16, 16), landmarks=str(root / lm_name), strict=True))  # noqa: E731
    check_reader(src, paths, (DataError,))


@pytest.fixture(scope="module")
def vggface2_root(work):
    root = work / "vggface2"
    for ident in ("n000001", "n000002"):
        (root / "test" / ident).mkdir(parents=True)
        (root / "test" / ident / "0001_01.jpg").write_bytes(encode(random_image(len(ident), (40, 32))))
    (root / "bb_landmark").mkdir()
    pts = "10,15,22,15,16,22,11,29,21,29"
    files = {
        "loose_landmark_test.csv": f"NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y\nn000001/0001_01,{pts}\n",
        "loose_bb_test.csv": "NAME_ID,X,Y,W,H\nn000001/0001_01,4,6,24,30\nn000002/0001_01,2,2,28,36\n",
    }
    return root, Seeds(files.items())


@fuzz_settings(150)
@given(data=st.data())
def test_vggface2_csvs_mutated(vggface2_root, data):
    root, files = vggface2_root
    name = _write_one_mutated(data, root / "bb_landmark", files)
    paths = (str(root / "bb_landmark" / name), str(root / "test" / ""))
    src = lambda: _decode_all(VGGFace2Source(str(root), "test", (16, 16), strict=True))  # noqa: E731
    check_reader(src, paths, (DataError,))


# ------------------------------------------------------------------------------------------------
# CFP (five-point landmarks, protocol lists) and aligned CelebA-wild trees (identities.txt)

_CFP_FILES = ("landmarks_5pt.txt", "Protocol/Pair_list_F.txt", "Protocol/Pair_list_P.txt",
              "Protocol/Split/FP/01/same.txt", "Protocol/Split/FF/02/diff.txt")


@pytest.fixture(scope="module")
def cfp_root(work):
    root = work / "cfp"
    cfp_tree(root)
    return root, Seeds((name, (root / name).read_text()) for name in _CFP_FILES)


def _read_cfp(root):
    src = CFPSource(str(root), (16, 16), strict=True)
    return _decode_all(src), read_cfp_pairs(str(root), "FP"), read_cfp_pairs(str(root), "FF")


@fuzz_settings(150)
@given(data=st.data())
def test_cfp_files_mutated(cfp_root, data):
    root, files = cfp_root
    name = _write_one_mutated(data, root, files)
    names = (str(root / name), str(root / "Data" / "Images" / ""))
    if name.startswith("Protocol"):  # a pair list's fault may surface in the fold file that uses it
        names += (str(root / "Protocol" / ""),)
    check_reader(lambda: _read_cfp(root), names, (DataError,))


@fuzz_settings(100)
@given(data=st.data())
def test_align_landmarks_file_mutated(work, data):
    """The landmarks file ``python -m jaxforget.align`` writes (and reads back to resume)."""
    marks = {"ann/1.jpg": np.arange(10.0).reshape(5, 2) + 20, "bob x/2.png": np.full((5, 2), 33.25)}
    path = work / "landmarks.txt"
    path.write_bytes(data.draw(text_mutated(format_landmarks(marks))))
    check_reader(lambda: read_landmarks(path), (str(path),), (DataError,))


@pytest.fixture(scope="module")
def wild_root(work):
    root = work / "wild"
    for ident, images in (("7357", ("a.jpg", "b.jpg")), ("42", ("c.jpg",))):
        (root / "aligned_112" / ident).mkdir(parents=True)
        for k, image in enumerate(images):
            (root / "aligned_112" / ident / image).write_bytes(encode(random_image(k, (112, 112))))
    return root, "image identity\na.jpg 7357\nb.jpg 7357\nc.jpg 42\n"


@fuzz_settings(100)
@given(data=st.data())
def test_celeba_wild_identities_mutated(wild_root, data):
    root, text = wild_root
    path = root / "identities.txt"
    path.write_bytes(data.draw(text_mutated(text)))
    src = lambda: _decode_all(CelebAWildSource(str(root), (16, 16), strict=True))  # noqa: E731
    check_reader(src, (str(path), str(root / "aligned_112" / "")), (DataError,))


# ------------------------------------------------------------------------------------------------
# Images, through a source's decoding


@pytest.fixture(scope="module")
def image_seeds():
    arr = random_image(7, (24, 20))
    grey = arr[..., 0]
    out = [encode(arr, "JPEG"), encode(arr, "PNG"), encode(grey, "PNG"), encode(grey, "PPM"), encode(arr, "BMP"),
           encode(arr, "GIF"), encode(arr, "TIFF"), encode(arr, "WEBP")]
    return Seeds(out)


@fuzz_settings(200)
@given(data=st.data(), strict=st.booleans())
def test_images_mutated(work, image_seeds, data, strict):
    root = work / "images"
    (root / "person").mkdir(parents=True, exist_ok=True)
    path = root / "person" / "face.png"
    path.write_bytes(data.draw(mutated(data.draw(st.sampled_from(image_seeds)))))
    src = FolderSource(str(root), (16, 16), strict=strict)
    record, _ = check_reader(lambda: src[0], (str(path),), (CorruptImageError,))
    if not strict:  # an undecodable image is masked out and reported, never raised
        assert record["valid"] or str(path) in src.failure_report()
    else:
        check_reader(src.verify, (str(path),), (CorruptImageError,))


# ------------------------------------------------------------------------------------------------
# A run's split.json


_SPLIT_IDS = np.repeat(np.array(["ann", "bob", "cy", "dee", "eve"]), [2, 3, 2, 4, 3])


def _use_split(split):
    """Everything a run does with a split it reloaded: no error may surface here."""
    parts = [split.forget_train(), split.forget_test(), split.retain_train(), split.retain_test()]
    for part in parts:
        assert part.dtype == np.int64 and np.all((part >= 0) & (part < split.num_records))
    labels = split.labels(_SPLIT_IDS)
    assert np.all((labels >= -1) & (labels < split.num_classes))
    return split


@fuzz_settings(150)
@given(data=st.data())
def test_split_json_mutated(work, data):
    split = make_split(_SPLIT_IDS, num_forget=2, seed=1, image_ids=[f"i{k}" for k in range(len(_SPLIT_IDS))])
    path = work / "split.json"
    path.write_bytes(data.draw(json_mutated(split.to_json())))
    check_reader(lambda: _use_split(Split.load(path)), (str(path),), (SplitError,))
