"""Protocols assemble the right query/gallery sets; the registry runs them by name."""

import numpy as np
import pytest

from jaxforget.eval import metrics as M
from jaxforget.eval import protocols as P
from jaxforget.eval import verification as V
from jaxforget.eval.embed import Embeddings


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, ids, per_id, d=16, noise=0.6, label_offset=0, id_offset=0):
    centers = _unit(rng.normal(size=(ids, d)))
    labels = np.repeat(np.arange(ids), per_id)
    emb = _unit(centers[labels] + noise * rng.normal(size=(len(labels), d)))
    return Embeddings(emb, labels + label_offset, np.arange(len(labels)) + id_offset)


def test_forget_base_is_self_search_minus_query():
    rng = np.random.default_rng(0)
    ft = _clustered(rng, 4, 5)
    out = P.forget_base(ft)
    ref = M.retrieval_metrics(ft.emb, ft.labels, ft.emb, ft.labels, ft.image_ids, ft.image_ids)
    for k in ("mAP", "R@1", "R@5", "R@10", "num_queries", "num_skipped"):
        assert out[k] == ref[k]
    assert out["CS"] == pytest.approx(M.compactness_score(ft.emb, ft.labels)["CS"])
    assert "acc" not in out  # no training centroids given


def test_forget_extended_distractors_never_match_and_ids_do_not_collide():
    rng = np.random.default_rng(1)
    ft = _clustered(rng, 3, 4)
    # distractors are copies of the forget images: each ties the query's own score (1.0) from a
    # negative item, so no query can be right at rank 1; their source ids 0..11 equal the forget
    # rows, which must not exclude them.
    d = Embeddings(ft.emb.copy(), np.zeros(len(ft), np.int64), np.arange(len(ft)))
    out = P.forget_extended(ft, d)
    assert out["R@1"] == 0.0 and out["num_distractors"] == 12 and out["gallery_size"] == 23
    base = P.forget_base(ft)
    assert out["mAP"] < base["mAP"] and out["num_queries"] == base["num_queries"]


def test_retain_search_split_is_deterministic_and_halves():
    labels = np.array([0] * 5 + [1] * 4 + [2] * 1 + [-1] * 2)
    q1, g1, singles = P.split_query_gallery(labels, seed=3)
    q2, g2, _ = P.split_query_gallery(labels[::-1].copy(), seed=3)  # same identities, other order
    assert singles == 1
    assert np.count_nonzero(labels[q1] == 0) == 2 and np.count_nonzero(labels[g1] == 0) == 3
    assert np.count_nonzero(labels[q1] == 1) == 2 and np.count_nonzero(labels[g1] == 1) == 2
    assert set(np.flatnonzero(labels == 2)) <= set(g1) and not set(q1) & set(g1)
    assert len(q1) + len(g1) == len(labels)
    assert len(q2) == len(q1)
    splits = {tuple(P.split_query_gallery(labels, seed=s)[0]) for s in range(10)}
    assert len(splits) > 1  # the seed matters
    np.testing.assert_array_equal(q1, P.split_query_gallery(labels, seed=3)[0])


def test_retain_search_and_cfp_metrics():
    rng = np.random.default_rng(2)
    src = _clustered(rng, 6, 6, noise=0.05)
    out = P.retain_search(src, seed=0, centroid_train=src)
    assert out["mAP"] == 1.0 and out["num_queries"] == 18 and out["acc"] == 1.0
    front = _clustered(np.random.default_rng(5), 3, 4, noise=0.05)
    prof = Embeddings(_unit(front.emb[::2] + 0.01), front.labels[::2], np.arange(6))
    c = P.cfp_fp(front, prof)
    assert c["R@1"] == 1.0 and c["num_queries"] == 12


def test_registry_runs_by_name_and_reports_missing_sets():
    rng = np.random.default_rng(4)
    sets = {
        "forget_train": _clustered(rng, 2, 4),
        "forget_test": _clustered(rng, 2, 4),
        "retain_train": _clustered(rng, 3, 4, label_offset=2),
        "retain_test": _clustered(rng, 3, 4, label_offset=2),
        "orl": _clustered(rng, 4, 3),
        "distractors": Embeddings(_unit(rng.normal(size=(10, 16))), -np.ones(10, int), np.arange(10)),
        "lfw": P.PairSet(_unit(rng.normal(size=(40, 16))), rng.random(20) < 0.5),
    }
    names = ("forget_base", "forget_extended", "retain_search", "retain_search:orl", "verification")
    assert P.required_sets(names) >= {"forget_test", "distractors", "retain_test", "orl"}
    res = P.run_protocols(names, sets, seed=1)
    assert set(res) == {"forget_base", "forget_extended", "retain_search", "retain_search:orl", "verification/lfw"}
    for name, m in res.items():
        if not name.startswith("verification"):
            assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1.0
    assert "acc" in res["forget_base"] and "acc" in res["retain_search"] and "acc" not in res["retain_search:orl"]
    assert 0.0 <= res["verification/lfw"]["acc"] <= 1.0
    with pytest.raises(KeyError, match="cfp_frontal"):
        P.run_protocols(["cfp_fp"], sets)
    with pytest.raises(KeyError, match="unknown protocol"):
        P.run_protocols(["forget_bsae"], sets)


def test_each_protocol_is_one_record_that_declares_its_sets():
    for name, p in P.PROTOCOLS.items():
        assert p.name == name and p.doc and callable(p.run)
        assert p.arg is None or p.arg in p.sets or not p.sets  # the slot `name:<set>` fills
        assert P.required_sets([name]) == set(p.reads())
    # `name:<set>` replaces the record's argument slot, the other sets stay.
    assert P.PROTOCOLS["forget_extended"].needs("other") == ("forget_test", "other")
    assert P.PROTOCOLS["retain_search"].needs("orl") == ("orl",)
    assert P.PROTOCOLS["verification"].needs() == () and P.PROTOCOLS["verification"].needs("lfw") == ("lfw",)
    assert P.required_sets(["forget_base"]) == {"forget_test", "forget_train", "retain_train"}
    assert P.required_sets(["retain_search:orl", "cfp_fp_extended"]) == {
        "orl", "retain_train", "cfp_frontal", "cfp_profile", "distractors"}
    with pytest.raises(KeyError, match="unknown protocol 'nope'"):
        P.required_sets(["nope"])


def test_a_protocol_reads_only_the_sets_its_record_declares():
    rng = np.random.default_rng(6)
    ft, fr = _clustered(rng, 3, 4), _clustered(rng, 3, 4)
    rt = _clustered(rng, 2, 4, label_offset=3)
    # forget_base reads forget_test, and forget_train / retain_train when given (centroid acc).
    p = P.PROTOCOLS["forget_base"]
    assert set(p.inputs({"forget_test": ft, "orl": rt})) == {"forget_test", "forget_train", "retain_train"}
    assert p.inputs({"forget_test": ft})["forget_train"] is None
    assert "acc" not in P.run_protocols(["forget_base"], {"forget_test": ft})["forget_base"]
    with_train = P.run_protocols(["forget_base"], {"forget_test": ft, "forget_train": fr, "retain_train": rt})
    assert with_train["forget_base"]["acc"] == pytest.approx(
        M.centroid_accuracy(np.concatenate([fr.emb, rt.emb]), np.concatenate([fr.labels, rt.labels]),
                            ft.emb, ft.labels)["acc"])
    # The argument names the set read for the slot; a missing one names protocol and set.
    assert P.PROTOCOLS["retain_search"].inputs({"orl": rt}, "orl")["retain_test"] is rt
    with pytest.raises(KeyError, match=r"protocol 'retain_search:orl' needs the embedding set 'orl'"):
        P.run_protocols(["retain_search:orl"], {"retain_test": rt})
    with pytest.raises(KeyError, match=r"protocol 'verification' found no PairSet"):
        P.run_protocols(["verification"], {"forget_test": ft})


def test_cfp_verification_is_the_kfold_accuracy_over_the_given_folds():
    rng = np.random.default_rng(7)
    issame = np.arange(60) % 2 == 0
    folds = (np.arange(60) // 2) % 10  # interleaved: not the contiguous default folds
    emb = _unit(rng.normal(size=(120, 16)))
    emb[1::2][issame] = _unit(emb[0::2][issame] + 0.8 * rng.normal(size=(30, 16)))
    sets = {"cfp_fp_pairs": P.PairSet(emb, issame, folds), "cfp_ff_pairs": P.PairSet(emb[::-1], issame)}
    res = P.run_protocols(["cfp_fp_verification", "cfp_ff_verification"], sets)
    assert res["cfp_fp_verification"] == V.verify_bin(emb, issame, folds=folds)
    assert res["cfp_ff_verification"] == V.verify_bin(emb[::-1], issame)
    assert res["cfp_fp_verification"]["num_folds"] == 10
    assert P.required_sets(["cfp_fp_verification"]) == {"cfp_fp_pairs"}
    with pytest.raises(KeyError, match=r"'cfp_ff_verification' needs the embedding set 'cfp_ff_pairs' "
                                       r"\(PairSet\)"):
        P.run_protocols(["cfp_ff_verification"], {"cfp_ff_pairs": _clustered(rng, 2, 2)})
