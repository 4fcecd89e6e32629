"""``python -m jaxforget.align``: raw CelebA-wild photos in, crops that the real MobileFaceNet
matches to the reference crops out; bad input ends with one line, never a traceback.

The real-photo tests need the ``align`` extra (dlib) or, for ``--detector=scrfd``, the ``onnx``
extra and the buffalo_s pack, and ../shared (skipped with the reason otherwise). The reference is
``celeba_wild/raw_reference_112/`` (the same dlib procedure on the full-size photos) and
``raw_sample/landmarks_5pt.txt``.
"""

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from jaxforget import align as cli
from jaxforget.data import align_photos

FEW_PIXELS = 3.0  # the "within a few pixels", for the median over photos


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err):
    lines = [ln for ln in err.splitlines() if not ln.startswith("[align]")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line(tmp_path, capsys):
    rc, _, err = _run(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert rc == 2 and "input folder not found" in _error_line(err)
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    rc, _, err = _run(capsys, tmp_path / "empty", tmp_path / "out")
    assert rc == 2 and "no person folders with images" in _error_line(err)
    with pytest.raises(SystemExit) as e:
        cli.parse_args([str(tmp_path), str(tmp_path / "o"), "--size", "112by96"])
    assert e.value.code == 2 and "HEIGHTxWIDTH" in capsys.readouterr().err
    assert cli.parse_args(["a", "b", "--size", "112x96"]).size == (112, 96)
    assert cli.parse_args(["a", "b"]).size == (112, 112)


def test_without_dlib_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "in" / "p").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "p" / "1.png")
    monkeypatch.setitem(sys.modules, "dlib", None)
    rc, _, err = _run(capsys, tmp_path / "in", tmp_path / "out")
    assert rc == 2 and "pip install 'jaxforget[align]'" in _error_line(err)


# -- real photos ---------------------------------------------------------------------------------
@pytest.fixture
def need_dlib():
    try:
        import dlib  # noqa: F401
    except ImportError as e:
        pytest.skip(f"needs the 'align' extra: pip install 'jaxforget[align]' ({e})")


@pytest.fixture
def mobilefacenet(shared):
    from jaxforget.models import load_pretrained

    return load_pretrained({"init": str(shared("weights", "mobilefacenet_casia", "068.ckpt"))})


def _embed(model, images):
    from jaxforget.eval.embed import embed_model

    bundle, variables = model
    n = len(images)
    batch = {"image": images, "label": np.zeros(n, np.int32), "mask": np.ones(n, bool), "index": np.arange(n)}
    return embed_model(bundle, variables, [batch], flip="add", progress=False).emb


def _retrieval(model, out, reference, keys):
    """Cosine similarities ``(n, n)`` of the written crops (rows) to the reference crops (columns),
    both as the model's central 112x96."""
    def load(path):
        a = np.asarray(Image.open(path).convert("RGB"))
        return a[:, 8:104] if a.shape[1] == 112 else a

    mine = _embed(model, np.stack([load(out / k) for k in keys]))
    ref = _embed(model, np.stack([load(reference / k) for k in keys]))
    return mine @ ref.T


def _landmark_errors(out, ref_marks):
    mine = align_photos.read_landmarks(out / align_photos.LANDMARKS_FILE)
    return {k: float(np.linalg.norm(mine[k] - ref_marks[k], axis=1).mean()) for k in mine if k in ref_marks}


@pytest.mark.real_data
def test_raw_photos_to_crops(need_dlib, shared, mobilefacenet, tmp_path, capsys):
    raw = shared("data", "celeba_wild", "raw_sample")
    reference = shared("data", "celeba_wild", "raw_reference_112")
    ref_marks = align_photos.read_landmarks(raw / "landmarks_5pt.txt")
    picked = {"7203": ["049668.jpg"] + sorted(p.name for p in (raw / "7203").iterdir())[:6],
              "7210": sorted(p.name for p in (raw / "7210").iterdir())[:6]}
    src = tmp_path / "photos"
    for person, names in picked.items():
        (src / person).mkdir(parents=True)
        for name in names:
            shutil.copy(raw / person / name, src / person / name)
    good = sorted(f"{p}/{n}" for p, names in picked.items() for n in names)
    (src / "7210" / "corrupt.jpg").write_bytes((raw / good[0]).read_bytes()[:300])
    noise = np.random.default_rng(0).integers(0, 255, (200, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "7210" / "noise.png")

    rc, stdout, err = _run(capsys, src, tmp_path / "crops", "--size", "112x96")
    assert rc == 0, err
    assert "[align] 15/15 images" in err  # the progress line
    report = json.loads((tmp_path / "crops" / "report.json").read_text())
    rows = {r["image"]: r for r in report["images"]}
    assert rows["7210/corrupt.jpg"]["status"] == "unreadable" and rows["7210/noise.png"]["status"] == "none"
    assert rows["7203/049668.jpg"]["status"] == "several" and rows["7203/049668.jpg"]["chosen"] == "closest"
    assert report["counts"] == {"found": len(good) - 1, "several": 1, "none": 1, "unreadable": 1,
                                "images": len(good) + 2, "people": 2}
    assert f"aligned {len(good)} of {len(good) + 2} photos of 2 people" in stdout
    assert "none: 7210/noise.png" in stdout and "unreadable: 7210/corrupt.jpg" in stdout

    errors = _landmark_errors(tmp_path / "crops", ref_marks)
    assert sorted(errors) == good and np.median(list(errors.values())) < FEW_PIXELS, errors
    assert Image.open(tmp_path / "crops" / good[0]).size == (96, 112)

    sim = _retrieval(mobilefacenet, tmp_path / "crops", reference, good)
    numbers = (f"retrieval on {len(good)} crops: own reference cosine median {np.median(np.diag(sim)):.4f}, "
               f"min {np.diag(sim).min():.4f}; best other reference {np.max(sim - 2 * np.eye(len(good)), 1).max():.4f}")
    assert list(sim.argmax(1)) == list(range(len(good)))  # each crop's nearest reference is its own

    # Running again resumes: nothing left to do, the same report.
    rc, stdout2, _ = _run(capsys, src, tmp_path / "crops", "--size", "112x96")
    assert rc == 0 and stdout2 == stdout
    assert json.loads((tmp_path / "crops" / "report.json").read_text()) == report
    rc, _, err = _run(capsys, src, tmp_path / "crops")  # other settings: refused, one line
    assert rc == 2 and "size=[112, 96]" in _error_line(err)
    print(f"\n{numbers}")


@pytest.mark.slow
@pytest.mark.real_data
def test_whole_raw_sample(need_dlib, shared, mobilefacenet, tmp_path, capsys):
    """All 175 photos: landmark error, detection counts and retrieval against the reference."""
    raw = shared("data", "celeba_wild", "raw_sample")
    reference = shared("data", "celeba_wild", "raw_reference_112")
    ref_marks = align_photos.read_landmarks(raw / "landmarks_5pt.txt")
    rc, stdout, err = _run(capsys, raw, tmp_path / "crops")
    assert rc == 0, err
    report = json.loads((tmp_path / "crops" / "report.json").read_text())
    errors = _landmark_errors(tmp_path / "crops", ref_marks)
    e = np.array(list(errors.values()))
    keys = sorted(errors)
    sim = _retrieval(mobilefacenet, tmp_path / "crops", reference, keys)
    nearest = sim.argmax(1)
    person = np.array([k.split("/")[0] for k in keys])
    print(f"\n{stdout}\nlandmark error over {len(e)} photos (px, mean of the five points): median {np.median(e):.2f}, "
          f"mean {e.mean():.2f}, max {e.max():.2f}\nretrieval: own reference nearest for "
          f"{(nearest == np.arange(len(keys))).mean():.3f}, same person for {(person[nearest] == person).mean():.3f}; "
          f"own cosine median {np.median(np.diag(sim)):.4f}, min {np.diag(sim).min():.4f}")
    assert report["counts"]["images"] == len(ref_marks) and report["counts"]["unreadable"] == 0
    assert np.median(e) < FEW_PIXELS
    assert np.mean(nearest == np.arange(len(keys))) >= 0.95 and np.all(person[nearest] == person)


# -- --detector=scrfd ----------------------------------------------------------------------------
def test_scrfd_flags_are_checked_and_a_missing_model_names_its_flag(tmp_path, capsys):
    (tmp_path / "in" / "p").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "p" / "1.png")
    args = cli.parse_args(["a", "b", "--detector=scrfd"])
    assert args.detect_size == 640 and cli.parse_args(["a", "b"]).detect_size == 700
    for bad, says in ((["--detector=scrfd", "--no-cnn"], "--no-cnn is for --detector=dlib"),
                      (["--detector-model=x.onnx"], "--detector-model is for --detector=scrfd"),
                      (["--detector=scrfd", "--detect-size=650"], "multiple of 32")):
        with pytest.raises(SystemExit) as e:
            cli.parse_args(["a", "b", *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err
    rc, _, err = _run(capsys, tmp_path / "in", tmp_path / "out", "--detector=scrfd",
                      f"--detector-model={tmp_path / 'gone.onnx'}")
    line = _error_line(err)
    assert rc == 2 and line.startswith(f"error: --detector-model {tmp_path / 'gone.onnx'}: file not found"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
def test_scrfd_raw_photos_to_crops(shared, tmp_path, capsys):
    """Three photos (one with two faces) of two people through --detector=scrfd: crops near the
    reference ones, a report that names the detector and its files, resuming, and refused other settings."""
    pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install 'jaxforget[onnx]'")
    raw = shared("data", "celeba_wild", "raw_sample")
    pack = shared("weights", "insightface_buffalo_s")
    ref_marks = align_photos.read_landmarks(raw / "landmarks_5pt.txt")
    good = ["7203/049668.jpg", "7203/" + sorted(p.name for p in (raw / "7203").iterdir())[0],
            "7210/" + sorted(p.name for p in (raw / "7210").iterdir())[0]]
    for key in good:
        (tmp_path / "photos" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw / key, tmp_path / "photos" / key)
    argv = [tmp_path / "photos", tmp_path / "crops", "--size", "112x96", "--detector=scrfd",
            f"--detector-model={pack / 'scrfd_500m_bnkps.onnx'}", f"--descriptor-model={pack / 'w600k_mbf.onnx'}"]
    rc, stdout, err = _run(capsys, *argv)
    assert rc == 0, err
    assert "aligned 3 of 3 photos of 2 people" in stdout and "several 1 (1 closest" in stdout, stdout
    report = json.loads((tmp_path / "crops" / "report.json").read_text())
    settings = report["settings"]
    assert settings["detector"] == "scrfd" and settings["detect_size"] == 640
    assert (settings["score_threshold"], settings["nms_threshold"]) == (0.5, 0.4)
    assert settings["model_sha256"].startswith("a3562ef6") and settings["descriptor_sha256"].startswith("9cc6e4a7")
    rows = {r["image"]: r for r in report["images"]}
    assert rows["7203/049668.jpg"]["status"] == "several" and rows["7203/049668.jpg"]["chosen"] == "closest"
    assert all(r["detector"] == "scrfd" and r["score"] >= 0.5 for r in rows.values())
    mine = align_photos.read_landmarks(tmp_path / "crops" / align_photos.LANDMARKS_FILE)
    assert sorted(mine) == sorted(good)
    for key in good:  # the labelled face, near the reference points (SCRFD's own points)
        ref = ref_marks[key]
        assert np.linalg.norm(mine[key] - ref, axis=1).mean() < 0.15 * np.linalg.norm(ref[0] - ref[1]), key
        assert Image.open(tmp_path / "crops" / key).size == (96, 112)

    rc, stdout2, _ = _run(capsys, *argv)  # resumes: nothing to do, the same report
    assert rc == 0 and stdout2 == stdout
    assert json.loads((tmp_path / "crops" / "report.json").read_text()) == report
    rc, _, err = _run(capsys, *argv, "--detect-size=320")  # other settings: refused, one line
    assert rc == 2 and "made with detect_size=640, this run asks detect_size=320" in _error_line(err)
