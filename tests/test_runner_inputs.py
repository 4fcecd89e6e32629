"""What a user hands the runner, through ``experiment.run`` / ``python -m jaxforget.main``: every
data format with a command-line path (an InsightFace ``.rec`` training pack as ``data.name``, a
``.bin`` verification pack as a protocol, the VGGFace2 layout) and a checkpoint that fixes the
model's sizes (issue 18 items 1 and 4). Each run is the seconds-long ``tiny_config``."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from jaxforget import experiment
from jaxforget.data import align, splits
from jaxforget.data.formats import recordio
from jaxforget.data.synthetic import SyntheticFaces
from jaxforget.eval import protocols
from jaxforget.eval.sets import load_stored_sets
from tests.data_fixtures import encode

from runner_fixtures import ROOT, tiny_config


def _images(faces: SyntheticFaces) -> np.ndarray:
    return faces.render(np.arange(len(faces)))


def _write_rec_pack(folder, faces: SyntheticFaces) -> None:
    """An InsightFace-style ``train.rec`` / ``train.idx``: header record 0, one PNG record per
    image (label = identity), then one record per identity with its image range."""
    images, n = _images(faces), len(faces)
    ids = faces.identities
    first_id_record = n + 1
    records = [(0, recordio.pack_payload([first_id_record, first_id_record + faces.num_identities], b""))]
    records += [(k + 1, recordio.pack_payload(float(ids[k]), encode(images[k], "PNG"), record_id=k + 1))
                for k in range(n)]
    for i in range(faces.num_identities):
        rows = np.flatnonzero(ids == i) + 1
        records.append((first_id_record + i, recordio.pack_payload([rows[0], rows[-1] + 1], b"")))
    folder.mkdir()
    recordio.write_recordio(folder / "train.rec", folder / "train.idx", records)


def _write_bin_pack(path, faces: SyntheticFaces) -> np.ndarray:
    """An InsightFace verification pack: one same-person pair (images 0 and 1 of an identity)
    and one different-person pair per identity; returns issame."""
    images = _images(faces)
    per = faces.images_per_identity
    pairs, issame = [], []
    for i in range(faces.num_identities):
        j = (i + 1) % faces.num_identities
        pairs += [(i * per, i * per + 1), (i * per, j * per)]
        issame += [True, False]
    bins = [encode(images[k], "PNG") for pair in pairs for k in pair]
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    return np.asarray(issame)


def test_recordio_pack_fine_tunes_and_bin_pack_is_a_protocol(tmp_path):
    """data.name=recordio: the split and CosFace fine-tuning (configs/finetune.py, the recipe that
    makes base models) read an InsightFace training pack; data.verification_bins: the .bin pack is
    embedded before and after and scored by 'verification:<stem>' (and stored, so tools re-score
    it without a model)."""
    faces = SyntheticFaces(16, 6, size=(48, 48), seed=0)
    _write_rec_pack(tmp_path / "pack", faces)
    issame = _write_bin_pack(tmp_path / "mini_lfw.bin", SyntheticFaces(5, 2, size=(48, 48), seed=1))
    c = tiny_config("finetune")
    c.pretrain.steps = 0  # one training phase: the fine-tuning itself
    c.data.name, c.data.root = "recordio", str(tmp_path / "pack")
    c.data.verification_bins = (str(tmp_path / "mini_lfw.bin"),)
    c.evals = ("forget_base", "verification:mini_lfw")
    c.cache_dir = str(tmp_path / "cache")
    run = tmp_path / "run"
    experiment.run(c, run)

    split = splits.Split.load(run / "split.json")
    assert set(split.forget_ids) | set(split.retain_ids) <= set(faces.identities.tolist())
    steps = (run / "metrics_unlearn.jsonl").read_text().splitlines()
    assert json.loads(steps[-1])["step"] == c.method.steps  # fine-tuned on the pack
    res = json.loads((run / "results.json").read_text())
    for state in ("original", "unlearned"):
        m = res[state]["verification/mini_lfw"]
        assert m["num_pairs"] == len(issame) and m["num_genuine"] == issame.sum()
        assert 0.0 <= m["acc"] <= 1.0
    assert "verification/mini_lfw" in (run / "results.md").read_text()
    # The pack's embeddings are stored with the run: its pairs are rebuilt without the model.
    _, _, sets = load_stored_sets(run, ("verification",), "unlearned")
    assert isinstance(sets["mini_lfw"], protocols.PairSet)
    np.testing.assert_array_equal(sets["mini_lfw"].issame, issame)
    again = protocols.run_protocols(("verification",), sets)["verification/mini_lfw"]
    assert again["acc"] == pytest.approx(res["unlearned"]["verification/mini_lfw"]["acc"])


def test_vggface2_tree_runs(tmp_path):
    """data.name=vggface2: <root>/test/<nXXXXXX>/<NNNN_NN>.jpg with loose landmarks, aligned."""
    faces = SyntheticFaces(12, 6, size=(64, 64), seed=2)
    images = _images(faces)
    root = tmp_path / "vggface2"
    (root / "bb_landmark").mkdir(parents=True)
    points = ",".join(f"{v:.1f}" for v in align.template_for((64, 64)).reshape(-1))
    rows = ["NAME_ID," + ",".join(f"P{k}{a}" for k in range(1, 6) for a in "XY")]
    for k, (ident, name) in enumerate(zip(faces.identities, faces.image_ids)):
        folder = root / "test" / f"n{ident:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{k % faces.images_per_identity:04d}_01"
        (folder / f"{stem}.jpg").write_bytes(encode(images[k]))
        rows.append(f"n{ident:06d}/{stem},{points}")
    (root / "bb_landmark" / "loose_landmark_test.csv").write_text("\n".join(rows) + "\n")
    c = tiny_config("project")  # closed form: the format is what is tested, not a training
    c.data.name, c.data.root = "vggface2", str(root)
    c.pretrain.steps = 0
    c.cache_dir = str(tmp_path / "cache")
    out = experiment.run(c, tmp_path / "run")
    split = splits.Split.load(tmp_path / "run" / "split.json")
    assert all(str(i).startswith("n0000") for i in split.forget_ids)
    assert out["unlearned"]["forget_base"]["num_queries"] == out["original"]["forget_base"]["num_queries"] > 0


def test_cli_checkpoint_conflict_is_one_line(tmp_path, shared):
    """The issue's command with an input size the checkpoint cannot take: one line, before any
    work, naming the value to use (without the flag the checkpoint's sizes are used)."""
    r = subprocess.run(
        [sys.executable, "-m", "jaxforget.main", "--config=configs/hard_disp.py",
         "--config.model.name=mobilefacenet",
         f"--config.model.init={shared('weights', 'mobilefacenet_casia', '068.ckpt')}",
         "--config.data.name=folder", f"--config.data.root={shared('data', 'orl_faces')}",
         "--config.forget.num_identities=5", "--config.model.input_size=(112, 112)",
         f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert err[0].startswith("error: model.init=") and "--config.model.input_size='(112, 96)'" in err[0]
    assert not (tmp_path / "run").exists()
