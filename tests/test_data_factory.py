"""The factory: every format by name, ``config.data`` blocks, and the messages for bad names / roots."""

import numpy as np
import pytest
from PIL import Image

from jaxforget.data.factory import DATA_HELP, SOURCES, make_source, source_from_config
from jaxforget.data.formats import recordio
from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.formats.folder import FolderSource
from jaxforget.data.formats.recordio import RecordIOSource
from jaxforget.data.source import MissingFileError, SubsetSource
from jaxforget.data.synthetic import SyntheticFaces
from tests.data_fixtures import encode, random_image


def _tree(root, people=3, images=4):
    for p in range(people):
        (root / f"s{p + 1}").mkdir(parents=True)
        for k in range(images):
            Image.fromarray(random_image(10 * p + k, (30, 24))[..., 0]).save(root / f"s{p + 1}" / f"{k + 1}.pgm")
    return root


def test_make_source_by_kind(tmp_path):
    assert set(SOURCES) == {"celeba", "celeba_wild", "folder", "vggface2", "cfp", "bin", "recordio"}
    src = make_source("folder", str(_tree(tmp_path / "orl")), (20, 16))
    assert isinstance(src, FolderSource) and len(src) == 12
    syn = make_source("synthetic", 2, 3, size=(16, 16), seed=1)
    assert isinstance(syn, SyntheticFaces) and len(syn) == 6
    img = random_image(0, (112, 112))
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    recordio.write_recordio(rec, idx, [(1, recordio.pack_payload(4.0, encode(img, "PNG")))])
    packed = make_source("recordio", str(rec), output_size=(112, 96))
    assert isinstance(packed, RecordIOSource) and packed.identities.tolist() == [4]
    np.testing.assert_array_equal(packed[0]["image"], img[:, 8:104])
    with pytest.raises(ValueError, match=r"unknown source kind 'lmdb'.*'synthetic'"):
        make_source("lmdb", str(tmp_path))


def test_source_from_config_synthetic_folder_and_max_images(tmp_path):
    syn = source_from_config({"name": "synthetic", "num_identities": 3, "images_per_identity": 2}, (16, 16), seed=4)
    assert isinstance(syn, SyntheticFaces) and len(syn) == 6 and syn.seed == 4
    np.testing.assert_array_equal(syn[5]["image"], SyntheticFaces(3, 2, (16, 16), seed=4)[5]["image"])
    root = str(_tree(tmp_path / "orl"))
    for name in ("orl", "folder"):
        src = source_from_config({"name": name, "root": root, "max_images": 0}, (20, 16))
        assert isinstance(src, FolderSource) and len(src) == 12
    first = source_from_config({"name": "orl", "root": root, "max_images": 5}, (20, 16))
    assert isinstance(first, SubsetSource) and first.image_ids == src.image_ids[:5]


def test_source_from_config_recordio_file_or_folder(tmp_path):
    """data.name='recordio': data.root is the .rec (its .idx beside it) or the folder of train.rec."""
    imgs = [random_image(k, (112, 112)) for k in range(3)]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    recordio.write_recordio(rec, idx, [(k + 1, recordio.pack_payload(float(k % 2), encode(im, "PNG")))
                                       for k, im in enumerate(imgs)])
    for root in (tmp_path, rec):
        src = source_from_config({"name": "recordio", "root": str(root)}, (112, 96))
        assert isinstance(src, RecordIOSource) and src.identities.tolist() == [0, 1, 0]
        np.testing.assert_array_equal(src[2]["image"], imgs[2][:, 8:104])
    idx.unlink()
    with pytest.raises(MissingFileError, match=r"data.root=.*: no .*train.idx; a RecordIO pack is a .rec file"):
        source_from_config({"name": "recordio", "root": str(tmp_path)}, (112, 96))


def test_source_from_config_celeba_limit(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    names = [f"{k + 1:06d}.jpg" for k in range(4)]
    for k, n in enumerate(names):
        (tmp_path / "img_align_celeba" / n).write_bytes(encode(random_image(k)))
    (tmp_path / "identity_CelebA.txt").write_text("".join(f"{n} {k % 2}\n" for k, n in enumerate(names)))
    src = source_from_config({"name": "celeba", "root": str(tmp_path), "max_images": 3, "align": False}, (56, 48))
    assert isinstance(src, CelebASource) and src.image_ids == names[:3] and src.landmarks is None


def test_source_from_config_messages(tmp_path):
    names = list(DATA_HELP)
    assert {"celeba", "vggface2", "orl", "folder", "recordio", "synthetic"} <= set(names)
    with pytest.raises(MissingFileError, match=r"data.root='/nowhere'.*should hold the ORL.*--config.data.root"):
        source_from_config({"name": "orl", "root": "/nowhere"}, (112, 96))
    with pytest.raises(MissingFileError, match=r"data.root=''"):
        source_from_config({"name": "celeba"}, (112, 96))
    with pytest.raises(ValueError, match=f"unknown data.name 'lfw'; choose {', '.join(names[:-1])} or {names[-1]}$"):
        source_from_config({"name": "lfw", "root": str(tmp_path)}, (112, 96))


def test_source_from_config_celeba_wild(tmp_path):
    """data.name='celeba_wild': an aligned tree; the model's 112x96 input is the central columns."""
    img = random_image(3, (112, 112))
    (tmp_path / "aligned_112" / "7201").mkdir(parents=True)
    (tmp_path / "aligned_112" / "7201" / "a.png").write_bytes(encode(img, "PNG"))
    src = source_from_config({"name": "celeba_wild", "root": str(tmp_path)}, (112, 96))
    assert src.identities.tolist() == [7201] and src.image_ids == ["7201/a.png"]
    np.testing.assert_array_equal(src[0]["image"], img[:, 8:104])
