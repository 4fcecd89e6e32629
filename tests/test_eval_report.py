"""results.json / results.md writing, aggregation over runs (and its CLI), the t-SNE figure."""

import importlib
import json

import numpy as np
import pytest

from jaxforget.eval import report as R
from jaxforget.eval.embed import Embeddings


def _load_tool(name):
    return importlib.import_module(f"tools.{name}")


def _run(seed, method, rng):
    def m():
        return {"mAP": float(rng.uniform(0.1, 0.9)), "R@1": float(rng.uniform(0.5, 1.0)), "R@5": 1.0, "R@10": 1.0,
                "num_queries": 100, "num_skipped": 0, "CS": float(rng.uniform(0, 0.6)), "acc": float(rng.uniform(0, 1))}
    return {"original": {"forget_base": m(), "retain_search": m()},
            "unlearned": {"forget_base": m(), "retain_search": m()},
            "meta": {"method": method, "seed": seed}}


def test_write_results_json_and_markdown(tmp_path):
    rng = np.random.default_rng(0)
    run = _run(0, "hard_disp", rng)
    run["unlearned"]["verification/lfw"] = {"acc": 0.9875, "TAR@FAR=1e-03": 0.5, "num_pairs": 10}
    run["unlearned"]["forget_base"]["R@10"] = float("nan")
    jp, mp = R.write_results(tmp_path / "wd", {k: v for k, v in run.items() if k != "meta"}, run["meta"])
    data = json.loads(jp.read_text())
    assert data["meta"] == {"method": "hard_disp", "seed": 0}
    assert data["original"]["forget_base"]["mAP"] == run["original"]["forget_base"]["mAP"]
    assert data["unlearned"]["forget_base"]["R@10"] is None  # NaN is written as null
    md = mp.read_text()
    cell = f"{100 * run['unlearned']['forget_base']['mAP']:.2f}"
    assert cell in md and f"{run['original']['retain_search']['CS']:.3f}" in md
    assert "| Original |" in md and "| hard_disp |" in md and "98.75" in md
    assert R.load_results(jp)["meta"]["method"] == "hard_disp"
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a results.json"):
        R.load_results(tmp_path / "junk.json")


def test_aggregate_mean_std_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    runs = [_run(s, m, rng) for s in range(3) for m in ("hard_disp", "ga")]
    for i, r in enumerate(runs):
        R.write_results(tmp_path / f"run{i}", r)
    agg = R.aggregate([R.load_results(tmp_path / f"run{i}" / "results.json") for i in range(6)])
    vals = [r["unlearned"]["forget_base"]["mAP"] for r in runs if r["meta"]["method"] == "ga"]
    assert agg["ga"]["forget_base"]["mAP"]["mean"] == pytest.approx(np.mean(vals))
    assert agg["ga"]["forget_base"]["mAP"]["std"] == pytest.approx(np.std(vals, ddof=1))
    # Original: one entry per seed (the first run of each seed), not one per method
    orig = [runs[2 * s]["original"]["forget_base"]["mAP"] for s in range(3)]
    assert agg["Original"]["forget_base"]["mAP"]["n"] == 3
    assert agg["Original"]["forget_base"]["mAP"]["mean"] == pytest.approx(np.mean(orig))

    tool = _load_tool("aggregate")
    out_md = tmp_path / "agg.md"
    assert tool.main([str(tmp_path / "run*" / "results.json"), "--out_md", str(out_md), "--out_json", str(tmp_path / "a.json")]) == 0
    md = out_md.read_text()
    cell = f"{100 * np.mean(vals):.2f} +- {100 * np.std(vals, ddof=1):.2f}"
    assert cell in md and md in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["ga"]["forget_base"]["mAP"]["n"] == 3
    with pytest.raises(SystemExit, match="no file matches"):
        tool.main([str(tmp_path / "nothing*.json")])


def test_tsne_plot_writes_png(tmp_path):
    from jaxforget.eval.plots import tsne_before_after

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 6)
    centers = rng.normal(size=(5, 8))
    before = Embeddings((centers[labels] + 0.1 * rng.normal(size=(30, 8))).astype(np.float32), labels, np.arange(30))
    after_emb = before.emb.copy()
    after_emb[labels < 2] = rng.normal(size=(12, 8))  # forget identities 0 and 1 scattered
    after = Embeddings(after_emb, labels, np.arange(30))
    path = tsne_before_after(before, after, [0, 1], tmp_path / "tsne.png", num_retain_ids=3, max_per_id=6, max_iter=250)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no image"):
        tsne_before_after(before, after, [42], tmp_path / "x.png")
