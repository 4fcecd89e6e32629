"""``python -m jaxforget.reindex``: OUT holds every usable photo once, in the layout embedding-reader
reads, with the engine's embeddings; a rerun resumes and refuses another model or gallery; a
``kill -9`` mid-shard loses and repeats nothing; bad input ends with one line."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("onnxruntime")

from jaxforget.data import detect  # noqa: E402
from jaxforget.data.gallery import list_gallery, load_aligned  # noqa: E402
from jaxforget.eval.engines import open_engine  # noqa: E402
from jaxforget.reindex import Options, reindex  # noqa: E402
from jaxforget.reindex.__main__ import main  # noqa: E402
from tests.reindex_fixtures import face, folder_gallery, jpeg, list_gallery_file, tar_gallery, tiny_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model"))


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv] + ["--decode-threads=2"])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err):
    lines = [ln for ln in err.splitlines() if not ln.startswith(("[reindex]", "re-indexing"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _read(out: pathlib.Path):
    """Every shard's metadata rows and embeddings, in shard order."""
    embs = sorted((out / "img_emb").glob("*.npy"))
    metas = sorted((out / "metadata").glob("*.parquet"))
    assert [p.stem[len("img_emb_"):] for p in embs] == [p.stem[len("metadata_"):] for p in metas]
    rows, vecs = [], []
    for e, m in zip(embs, metas):
        table = pq.read_table(m).to_pylist()
        v = np.load(e)
        assert len(table) == len(v)
        rows += table
        vecs.append(v)
    return rows, np.concatenate(vecs)


def test_out_holds_each_usable_photo_once_with_the_engine_embeddings(tmp_path, model, capsys):
    onnx, _ = model
    gallery = folder_gallery(tmp_path / "gallery", people=4, photos=5)
    rc, out, err = _cli(capsys, onnx, gallery, tmp_path / "out", "--shard-size=7", "--batch-size=3")
    assert rc == 0, err
    assert "embedded 20 of 23 photos" in out and "skipped 3 (1 empty, 1 not_image, 1 truncated)" in out
    assert "IndexIDMap(IndexFlatIP) over 20 vectors" in out
    assert "img/s" in err and "ETA" in err or "done" in err
    rows, vecs = _read(tmp_path / "out")
    gal = list_gallery(gallery)
    usable = [r for r in range(len(gal)) if gal.paths[r].endswith(tuple(f"{j:03d}.jpg" for j in range(5)))]
    assert [r["row"] for r in rows] == usable and len({r["row"] for r in rows}) == 20
    assert [r["image_path"] for r in rows] == [gal.paths[r] for r in usable]
    assert [r["person"] for r in rows] == [gal.persons[r] for r in usable]
    engine = open_engine(onnx)
    want = engine.embed(np.stack([load_aligned(gal.item(r), (32, 32)) for r in usable]))
    np.testing.assert_allclose(vecs, want, atol=1e-6)
    assert vecs.dtype == np.float32
    index = faiss.read_index(str(tmp_path / "out" / "index.faiss"))
    assert index.ntotal == 20
    _, ids = index.search(want[:5], 1)
    assert ids[:, 0].tolist() == usable[:5]

    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    s = m["settings"]
    assert m["status"] == "complete" and s["model"]["path"] == str(onnx.resolve()) and len(s["model"]["sha256"]) == 64
    assert s["embedding"]["engine"] == "onnxruntime" and s["embedding"]["input_size"] == [32, 32]
    assert (s["embedding"]["pixel_mean"], s["embedding"]["pixel_std"]) == (127.5, 127.5)
    assert m["counts"] == {"listed": 23, "embedded": 20, "skipped": 3,
                           "skipped_by_reason": {"empty": 1, "not_image": 1, "truncated": 1}}
    assert sorted(x["image_path"] for x in m["skipped"]) == ["p0/empty.jpg", "p1/notes.txt", "p2/truncated.jpg"]
    assert m["shards"]["total"] == m["shards"]["done"] == 4 and m["throughput"]["images_per_s"] > 0
    assert m["throughput"]["wall_seconds"] > 0 and m["index"]["exact"]
    assert not list((tmp_path / "out").rglob("*.partial"))

    # run again: nothing to embed, same files
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "img_emb").iterdir()}
    rc, out, _ = _cli(capsys, onnx, gallery, tmp_path / "out", "--shard-size=7", "--batch-size=3")
    assert rc == 0 and "0 this run: nothing left to embed" in out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "img_emb").iterdir()} == before


def test_a_rerun_refuses_another_model_gallery_or_setting(tmp_path, model, capsys):
    onnx, directory = model
    gallery = folder_gallery(tmp_path / "gallery", people=2, photos=3, bad=False)
    out = tmp_path / "out"
    assert _cli(capsys, onnx, gallery, out, "--quiet")[0] == 0
    rc, _, err = _cli(capsys, directory, gallery, out, "--engine=onnxruntime")
    assert rc == 2 and "holds embeddings of another model" in _error_line(err) and "tiny0_model" in err
    (gallery / "p1" / "new.jpg").write_bytes(jpeg(face(1, 40)))
    rc, _, err = _cli(capsys, onnx, gallery, out)
    line = _error_line(err)
    assert rc == 2 and "another gallery" in line and "6 photos" in line and "7" in line and "'p1/new.jpg'" in line
    (gallery / "p1" / "new.jpg").unlink()
    (gallery / "p0" / "001.jpg").write_bytes(jpeg(face(0, 41)))  # same name, other photo
    rc, _, err = _cli(capsys, onnx, gallery, out)
    assert rc == 2 and "row 1 changed size" in _error_line(err)
    (gallery / "p0" / "001.jpg").write_bytes(jpeg(face(0, 1)))
    rc, _, err = _cli(capsys, onnx, gallery, out, "--dtype=float16")
    assert rc == 2 and "dtype='float32' (this run: 'float16')" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, out, "--engine=jax")
    assert rc == 2 and "engine='onnxruntime' (this run: 'jax')" in _error_line(err)
    assert _cli(capsys, onnx, gallery, out, "--quiet")[0] == 0  # the same again: fine


def test_bad_input_is_one_line(tmp_path, model, capsys):
    onnx, _ = model
    gallery = folder_gallery(tmp_path / "g", people=1, photos=1, bad=False)
    rc, _, err = _cli(capsys, tmp_path / "none.onnx", gallery, tmp_path / "o1")
    assert rc == 2 and "does not exist" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, tmp_path / "nowhere", tmp_path / "o2")
    assert rc == 2 and "gallery" in _error_line(err) and "does not exist" in err
    bad = tmp_path / "bad" / "p0"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.jpg").write_bytes(b"GIF89a broken")
    rc, _, err = _cli(capsys, onnx, tmp_path / "bad", tmp_path / "o3")
    line = _error_line(err)
    assert rc == 2 and "none of the 2 photos" in line and "1 empty" in line and "1 not_image" in line
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "x").write_text("mine")
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o4")
    assert rc == 2 and "not empty" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o5", "--index=IVF8,Bogus")
    assert rc == 2 and "not a FAISS factory string" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o7", "--shard-size=0", "--workers=0")
    assert rc == 2 and "--shard-size=0 (must be at least 1); --workers=0" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o8", "--align=dlib", "--detector-model=x.onnx")
    assert rc == 2 and "are for --align=scrfd" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o9", "--align=scrfd", f"--detector-model={tmp_path}/no.onnx")
    assert rc == 2 and "no.onnx: file not found" in _error_line(err)
    rc, _, err = _cli(capsys, onnx, gallery, tmp_path / "o6", "--align=nosuch")
    assert rc == 2 and "--align=nosuch: no such face detector; use one of dlib, scrfd" in _error_line(err)


def test_layouts_dtype_and_jax_engine_give_the_same_embeddings(tmp_path, model):
    onnx, directory = model
    gallery = folder_gallery(tmp_path / "gallery", people=3, photos=4, bad=False)
    quiet = Options(progress=False, decode_threads=2)
    reindex(onnx, gallery, tmp_path / "folder", quiet)
    rows, ref = _read(tmp_path / "folder")
    reindex(onnx, list_gallery_file(tmp_path, gallery), tmp_path / "list", quiet)
    lrows, lvecs = _read(tmp_path / "list")
    assert [r["image_path"] for r in lrows] == ["gallery/" + r["image_path"] for r in rows]
    assert [r["person"] for r in lrows] == [r["person"] for r in rows]
    np.testing.assert_array_equal(lvecs, ref)
    m = json.loads((tmp_path / "list" / "manifest.json").read_text())
    assert m["counts"]["skipped_by_reason"] == {"duplicate": 1}
    shards = tar_gallery(tmp_path, people=3, photos=4, per_shard=5)
    reindex(onnx, str(shards / "{00000..00002}.tar"), tmp_path / "tar", quiet)
    trows, tvecs = _read(tmp_path / "tar")
    assert [r["person"] for r in trows] == [r["person"] for r in rows]
    np.testing.assert_array_equal(tvecs, ref)  # the same photos (same JPEG bytes) in tars
    reindex(onnx, gallery, tmp_path / "half", Options(progress=False, dtype="float16", shard_size=5))
    _, hvecs = _read(tmp_path / "half")
    assert hvecs.dtype == np.float16 and np.abs(hvecs.astype(np.float32) - ref).max() < 1e-3
    m = reindex(directory, gallery, tmp_path / "jax", quiet)
    assert m["settings"]["embedding"]["engine"] == "jax" and m["settings"]["model"]["kind"] == "checkpoint"
    _, jvecs = _read(tmp_path / "jax")
    np.testing.assert_allclose(jvecs, ref, atol=1e-4)


def _wait_for(path_glob, out: pathlib.Path, proc: subprocess.Popen, timeout: float = 120.0) -> pathlib.Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list(out.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {path_glob} appeared: "
                                 f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.001)
    raise AssertionError(f"{path_glob} did not appear in {timeout} s")


def test_kill_minus_9_mid_shard_loses_and_repeats_nothing(tmp_path, model):
    onnx, _ = model
    gallery = folder_gallery(tmp_path / "gallery", people=8, photos=60)  # 480 photos + 3 bad ones
    args = ["--shard-size=100", "--batch-size=2", "--decode-threads=1", "--quiet"]
    reindex(onnx, gallery, tmp_path / "whole", Options(shard_size=100, batch_size=2, decode_threads=1, progress=False))
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for shard in ("1", "3"):  # kill while shard 1 is half written; then the rerun, while shard 3 is
        proc = subprocess.Popen([sys.executable, "-m", "jaxforget.reindex", str(onnx), str(gallery), str(out), *args],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(f"img_emb/img_emb_{shard}.npy.partial", out, proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "shards" / f"shard_{shard}.json").exists()  # it died mid-shard
    rc = subprocess.run([sys.executable, "-m", "jaxforget.reindex", str(onnx), str(gallery), str(out), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    got_rows, got = _read(out)
    want_rows, want = _read(tmp_path / "whole")
    assert got_rows == want_rows and len(got_rows) == 480 and len({r["row"] for r in got_rows}) == 480
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not list(out.rglob("*.partial"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["embedded"] == 480 and m["counts"]["skipped"] == 3 and m["shards"]["done_this_run"] < 5
    assert faiss.read_index(str(out / "index.faiss")).ntotal == 480


class _FakeDetector:
    """A detector that finds one face with the template's landmarks in every photo but black ones."""

    def __init__(self, **options):
        self.settings = {"detector": "fake", **options}

    def detect(self, image, chips=False):
        from jaxforget.data.align import template_for

        arr = np.asarray(image)
        if arr.max() == 0:
            return []
        h, w = arr.shape[:2]
        pts = template_for((h, w))
        return [detect.Face((0.0, 0.0, float(w), float(h)), pts, "fake")]


def test_align_passes_the_detector_name_through(tmp_path, model, monkeypatch):
    """``--align=<name>`` uses the detector registered as ``name`` (a stand-in registered here,
    so the name's path is tested without a model file)."""
    onnx, _ = model
    monkeypatch.setitem(detect.DETECTORS, "scrfd", _FakeDetector)
    gallery = folder_gallery(tmp_path / "gallery", people=2, photos=2, bad=False, size=(64, 64))
    (gallery / "p1" / "black.jpg").write_bytes(jpeg(np.zeros((64, 64, 3), np.uint8)))
    m = reindex(onnx, gallery, tmp_path / "out", Options(align="scrfd", progress=False))
    assert m["counts"]["embedded"] == 4 and m["counts"]["skipped_by_reason"] == {"no_face": 1}
    rows, _ = _read(tmp_path / "out")
    assert all(r["faces"] == 1 for r in rows)
    assert m["settings"]["embedding"]["align"] == "scrfd"
    # the detector gets its model files as absolute paths (Ray workers run in other folders)
    assert pathlib.Path(m["settings"]["embedding"]["detector"]["model"]).is_absolute()


@pytest.mark.real_data
@pytest.mark.parametrize("detector", ["dlib", "scrfd"])
def test_align_on_raw_photos(tmp_path, shared, capsys, detector, monkeypatch):
    if detector == "dlib":
        pytest.importorskip("dlib")
    else:  # SCRFD's default model paths are relative to the repository root
        shared("weights", "insightface_buffalo_s", "scrfd_500m_bnkps.onnx")
        monkeypatch.chdir(ROOT)
    raw = shared("data", "celeba_wild", "raw_sample", "7201")
    person = tmp_path / "gallery" / "7201"
    person.mkdir(parents=True)
    for name in sorted(os.listdir(raw))[:3]:
        (person / name).write_bytes((raw / name).read_bytes())
    (person / "blank.jpg").write_bytes(jpeg(np.full((200, 200, 3), 128, np.uint8)))
    onnx = tiny_model(tmp_path / "m")[0]
    rc, out, err = _cli(capsys, onnx, tmp_path / "gallery", tmp_path / "out", f"--align={detector}")
    assert rc == 0, err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["counts"]["embedded"] == 3 and m["skipped"][0]["image_path"] == "7201/blank.jpg"
    assert m["skipped"][0]["reason"] == "no_face" and m["settings"]["embedding"]["align"] == detector
    rows, _ = _read(tmp_path / "out")
    assert [r["faces"] for r in rows] == [1, 1, 1]
    if detector == "scrfd":  # the detector's files are part of what a rerun must match
        assert len(m["settings"]["embedding"]["detector"]["model_sha256"]) == 64


@pytest.mark.real_data
def test_the_zoo_file_reindexes_real_faces(tmp_path, shared):
    """InsightFace's deployed recognition file on onnxruntime: CelebA-wild people's aligned photos
    find their own person first."""
    src = shared("data", "celeba_wild", "aligned_112")
    people = sorted(os.listdir(src))[:4]
    for p in people:
        (tmp_path / "gallery" / p).mkdir(parents=True)
        for name in sorted(os.listdir(src / p))[:6]:
            (tmp_path / "gallery" / p / name).write_bytes((src / p / name).read_bytes())
    zoo = shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx")
    m = reindex(zoo, tmp_path / "gallery", tmp_path / "out", Options(progress=False, forget=",".join(people[:2])))
    assert m["counts"]["embedded"] == 24 and m["settings"]["embedding"]["engine"] == "onnxruntime"
    assert m["embedding"]["dim"] == 512
    assert m["audit"]["after"]["exact"]["R@1"] >= 0.9
