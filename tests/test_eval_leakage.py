"""The leakage check finds a forget identity hidden under another label, and passes a clean set."""

import json

import numpy as np

from jaxforget.eval.embed import Embeddings
from jaxforget.eval.leakage import format_leakage_report, leakage_check


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sets(rng, leak):
    d = 64
    centers = _unit(rng.normal(size=(12, d)))  # random 64-d directions: cross cosines ~ +-0.13; images ~0.85 from their centre
    f_lab = np.repeat(np.arange(4), 6)
    forget = Embeddings(_unit(centers[f_lab] + 0.08 * rng.normal(size=(24, d))), f_lab, np.arange(24))
    o_lab = np.repeat(np.arange(4, 12), 5)
    o_cent = centers[o_lab].copy()
    if leak:
        o_cent[o_lab == 11] = centers[2]  # identity "11" in the other set is forget identity 2
    other_lab = np.where(o_lab < 8, o_lab, -1)  # half the other set is unlabelled distractors
    other = Embeddings(_unit(o_cent + 0.08 * rng.normal(size=(40, d))), other_lab, np.arange(100, 140))
    return forget, other


def test_planted_leak_is_flagged_and_clean_set_passes():
    forget, other = _sets(np.random.default_rng(0), leak=True)
    rep = leakage_check(forget, other)
    flagged = [p["forget_label"] for p in rep["identities"] if p["flagged"]]
    assert flagged == [2]
    assert rep["top_pairs"][0]["forget_label"] == 2 and rep["top_pairs"][0]["flagged"]
    sims = [p["similarity"] for p in rep["top_pairs"]]
    assert sims == sorted(sims, reverse=True)
    ref = rep["references"]
    assert ref["same_identity_half_centroid_similarity_mean"] > ref["max_different_forget_identity_centroid_similarity"]
    text = format_leakage_report(rep)
    assert "YES" in text and "flagged" in text

    clean_forget, clean_other = _sets(np.random.default_rng(0), leak=False)
    clean = leakage_check(clean_forget, clean_other)
    assert clean["num_flagged_identities"] == 0 and clean["num_flagged_pairs"] == 0
    assert "no identity or pair above" in format_leakage_report(clean)


def test_cli_writes_json_and_exit_status(tmp_path, capsys):
    from tools import leakage_check as tool
    forget, other = _sets(np.random.default_rng(1), leak=True)
    fp, op = forget.save(tmp_path / "f.npz"), other.save(tmp_path / "o.npz")
    rc = tool.main(["--forget", str(fp), "--other", str(op), "--out", str(tmp_path / "rep.json")])
    assert rc == 1
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["num_flagged_identities"] == 1
    assert "Leakage check" in capsys.readouterr().out
