"""The audit: every forgotten photo searched among the whole gallery (its own photo left out),
exact ranks checked against a brute-force search, the index's own answers beside them, before
and after side by side."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("onnxruntime")

from jaxforget.data.splits import make_split  # noqa: E402
from jaxforget.errors import UserError  # noqa: E402
from jaxforget.reindex import Options, reindex  # noqa: E402
from jaxforget.reindex.audit import audit, format_audit, load_out  # noqa: E402
from tests.reindex_fixtures import face, folder_gallery, jpeg, tiny_model  # noqa: E402


def _brute(emb, persons, people):
    """R@1 and first same-person ranks by brute force (ties: a negative first)."""
    hits, firsts = [], []
    for i, p in enumerate(persons):
        if p not in people:
            continue
        s = emb @ emb[i]
        s[i] = -np.inf
        same = np.array([q == p for q in persons])
        same[i] = False
        best_pos = s[same].max()
        rank = 1 + int(np.sum(s[~same] >= best_pos))
        firsts.append(rank)
        hits.append(rank == 1)
    return float(np.mean(hits)), firsts


def test_audit_after_and_before(tmp_path):
    onnx, _ = tiny_model(tmp_path / "m")
    before_g = folder_gallery(tmp_path / "g", people=5, photos=4, bad=False)
    quiet = Options(progress=False)
    reindex(onnx, before_g, tmp_path / "before", quiet)
    # "after": the two forgotten people's photos no longer look alike (unrelated images, same names)
    for p in ("p1", "p3"):
        for j in range(4):
            (before_g / p / f"{j:03d}.jpg").write_bytes(jpeg(face(100 + 10 * int(p[1]) + j, 0)))
    m = reindex(onnx, before_g, tmp_path / "after", Options(progress=False, forget="p1,p3",
                                                            before=str(tmp_path / "before")))
    a, b = m["audit"]["after"], m["audit"]["before"]
    assert a["photos"] == b["photos"] == 8 and a["gallery"] == 20 and a["people_found"] == ["p1", "p3"]
    data = load_out(tmp_path / "after")
    r1, firsts = _brute(data["emb"], data["persons"], {"p1", "p3"})
    assert a["exact"]["R@1"] == pytest.approx(r1) and a["first_same_person_rank"]["median"] == np.median(firsts)
    assert b["exact"]["R@1"] == 1.0 and b["exact"]["mAP"] == 1.0  # near-duplicates find each other
    assert a["exact"]["R@1"] < 0.5 and a["exact"]["mAP"] < b["exact"]["mAP"]
    # the exact index gives the exact ranking's R@1
    assert a["index"]["R@1"] == pytest.approx(a["exact"]["R@1"]) and a["index"]["searched_top"] == 20
    assert set(a["per_person"]) == {"p1", "p3"} and a["per_person"]["p1"]["photos"] == 4
    # everyone else still finds their own photos (near-duplicates), in both
    assert a["others"]["people"] == 3 and a["others"]["R@1"] == 1.0 and b["others"]["R@1"] == 1.0
    assert a["others"]["num_queries"] == 12
    text = format_audit(m["audit"])
    assert "before" in text and "after" in text and "p1: after R@1" in text


def test_audit_people_from_a_split_and_errors(tmp_path):
    onnx, _ = tiny_model(tmp_path / "m")
    g = folder_gallery(tmp_path / "g", people=3, photos=3, bad=False)
    persons = [f"p{p}" for p in range(3) for _ in range(3)]
    split = make_split(persons, forget_ids=["p2"], image_ids=[f"{i}" for i in range(9)])
    split.save(tmp_path / "split.json")
    m = reindex(onnx, g, tmp_path / "out", Options(progress=False, split=str(tmp_path / "split.json")))
    assert m["audit"]["people"] == ["p2"] and m["audit"]["after"]["photos"] == 3
    with pytest.raises(UserError, match="none of the people nobody"):
        audit(tmp_path / "out", ["nobody"])
    with pytest.raises(UserError, match="--before needs --forget"):
        reindex(onnx, g, tmp_path / "out", Options(progress=False, before=str(tmp_path / "out")))
    with pytest.raises(UserError, match="no readable manifest.json"):
        audit(tmp_path / "out", ["p2"], before=tmp_path / "nowhere")
