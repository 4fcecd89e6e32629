"""Galleries: the three layouts list the same photos in a stable sorted order with their people;
each bad file is skipped with its reason; aligned crops are fitted to the model's input size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import gallery as g
from tests.reindex_fixtures import face, folder_gallery, jpeg, list_gallery_file, tar_gallery


def _skip_reason(gal, path, size=(32, 32)):
    item = gal.item(gal.paths.index(path))
    with pytest.raises(g.SkippedImage) as e:
        g.load_aligned(item, size)
    return e.value.reason


def test_folder_layout_lists_people_sorted_and_skips_bad_files(tmp_path):
    root = folder_gallery(tmp_path / "gallery")
    (root / "p3" / ".hidden.jpg").write_bytes(b"x")
    (root / "top.jpg").write_bytes(jpeg(face(9, 0)))
    gal = g.list_gallery(root)
    assert gal.layout == "folder" and gal.has_person
    assert gal.paths == sorted(gal.paths) and "report.json" not in gal.paths and "p3/.hidden.jpg" not in gal.paths
    assert gal.paths[:6] == ["p0/000.jpg", "p0/001.jpg", "p0/002.jpg", "p0/003.jpg", "p0/004.jpg", "p0/empty.jpg"]
    assert gal.persons[gal.paths.index("p1/notes.txt")] == "p1" and gal.persons[gal.paths.index("top.jpg")] is None
    assert len(gal) == 4 * 5 + 3 + 1
    assert _skip_reason(gal, "p0/empty.jpg") == "empty"
    assert _skip_reason(gal, "p1/notes.txt") == "not_image"
    assert _skip_reason(gal, "p2/truncated.jpg") == "truncated"
    img = g.load_aligned(gal.item(0), (32, 32))
    np.testing.assert_array_equal(img, np.asarray(Image.open(root / "p0" / "000.jpg").convert("RGB")))
    # the listing's digest depends on the photos, not on where the folder is
    moved = folder_gallery(tmp_path / "elsewhere")
    (moved / "top.jpg").write_bytes(jpeg(face(9, 0)))
    (moved / "p3" / ".hidden.jpg").write_bytes(b"x")
    assert g.list_gallery(moved).digest() == gal.digest()
    (moved / "p3" / "new.jpg").write_bytes(jpeg(face(3, 50)))
    assert g.list_gallery(moved).digest() != gal.digest()


def test_missing_file_and_vanished_file(tmp_path):
    root = folder_gallery(tmp_path / "gallery", people=1, photos=2, bad=False)
    gal = g.list_gallery(root)
    (root / "p0" / "001.jpg").unlink()
    assert _skip_reason(gal, "p0/001.jpg") == "missing"
    with pytest.raises(g.MissingFileError, match="does not exist"):
        g.list_gallery(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(g.EmptyDatasetError, match="no images"):
        g.list_gallery(tmp_path / "empty")


def test_list_layout_resolves_relative_paths_and_drops_repeats(tmp_path):
    root = folder_gallery(tmp_path / "gallery", people=2, photos=3, bad=False)
    listing = list_gallery_file(tmp_path, root)
    gal = g.list_gallery(listing)
    assert gal.layout == "list" and len(gal) == 6 and gal.paths[0] == "gallery/p0/000.jpg"
    assert gal.persons[:3] == ["p0"] * 3
    assert gal.listing_skips == [("gallery/p0/000.jpg", "duplicate", "listed more than once; embedded once")]
    np.testing.assert_array_equal(g.load_aligned(gal.item(0), (32, 32)),
                                  np.asarray(Image.open(root / "p0" / "000.jpg").convert("RGB")))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(g.GalleryError, match="not UTF-8"):
        g.list_gallery(tmp_path / "binary.txt")


def test_webdataset_layout_braces_globs_and_cls(tmp_path):
    shards = tar_gallery(tmp_path, people=3, photos=4, per_shard=5)  # 12 samples in 3 tars
    by_brace = g.list_gallery(str(shards / "{00000..00002}.tar"))
    by_glob = g.list_gallery(str(shards / "*.tar"))
    assert by_brace.paths == by_glob.paths and len(by_brace) == 12 and by_brace.layout == "webdataset"
    assert by_brace.paths[0] == "00000.tar/000000000.jpg" and by_brace.persons[:5] == ["p0"] * 4 + ["p1"]
    img = g.load_aligned(by_brace.item(5), (32, 32))
    ref = np.asarray(Image.open(io.BytesIO(jpeg(face(1, 1)))).convert("RGB"))
    np.testing.assert_array_equal(img, ref)
    assert g.expand_braces("a{8..10}b{x,y}") == ["a8bx", "a8by", "a9bx", "a9by", "a10bx", "a10by"]
    assert g.expand_braces("s{00..02}.tar") == ["s00.tar", "s01.tar", "s02.tar"]
    with pytest.raises(g.GalleryError, match="does not exist"):
        g.list_gallery(str(shards / "{00000..00007}.tar"))
    (tmp_path / "bad.tar").write_bytes(b"\x1f\x8b" + b"0" * 600)
    with pytest.raises(g.GalleryError, match="uncompressed tar"):
        g.list_gallery(str(tmp_path / "bad.tar"))


def test_truncated_tar_member_is_skipped(tmp_path):
    shards = tar_gallery(tmp_path, people=1, photos=2, per_shard=2)
    tar = shards / "00000.tar"
    gal = g.list_gallery(str(tar))
    item = gal.item(1)
    tar.write_bytes(tar.read_bytes()[: item.offset + item.size // 2])
    with pytest.raises(g.SkippedImage) as e:
        g.load_aligned(item, (32, 32))
    assert e.value.reason == "truncated"


def test_aligned_crops_fit_the_model_input(tmp_path):
    """A 112x112 aligned crop for a 112x96 model: the central 96 columns exactly; another size: resized."""
    arr = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    item = g.Item(0, "a.png", None, str(tmp_path / "a.png"), -1, (tmp_path / "a.png").stat().st_size)
    np.testing.assert_array_equal(g.load_aligned(item, (112, 96)), arr[:, 8:104])
    np.testing.assert_array_equal(g.load_aligned(item, (112, 112)), arr)
    assert g.load_aligned(item, (64, 64)).shape == (64, 64, 3)
