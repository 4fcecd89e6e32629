"""The re-identification audit (k-NN and linear probe on forget embeddings)."""

import numpy as np

from jaxforget.eval import Embeddings, report, run_protocols
from jaxforget.eval.audit import reid_audit


def _clusters(rng, centres, labels, noise):
    x = centres[labels] + noise * rng.standard_normal((len(labels), centres.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_audit_finds_intact_identities_and_not_shuffled_ones():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    ytr = np.repeat(np.arange(4), 5)
    yte = np.repeat(np.arange(4), 3)
    train = Embeddings(_clusters(rng, centres, ytr, 0.1), ytr, np.arange(20))
    test = Embeddings(_clusters(rng, centres, yte, 0.1), yte, np.arange(20, 32))
    out = reid_audit(train, test)
    assert out["knn_acc"] == 1.0 and out["probe_acc"] == 1.0
    assert out["chance"] == 0.25 and out["num_queries"] == 12
    # Test images that moved onto the next identity's cluster are never identified.
    moved = Embeddings(_clusters(rng, centres, (yte + 1) % 4, 0.1), yte, test.image_ids)
    out = reid_audit(train, moved)
    assert out["knn_acc"] == 0.0 and out["probe_acc"] == 0.0


def test_audit_is_a_protocol_and_reaches_the_report(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 8))
    y = np.repeat(np.arange(3), 4)
    sets = {"forget_train": Embeddings(_clusters(rng, centres, y, 0.2), y, np.arange(12)),
            "forget_test": Embeddings(_clusters(rng, centres, y, 0.2), y, np.arange(12, 24))}
    res = run_protocols(["reid_audit"], sets)
    assert set(res["reid_audit"]) >= {"knn_acc", "probe_acc", "chance"}
    _, md = report.write_results(tmp_path, {"original": res, "unlearned": res}, {"method": "x"})
    assert "reid_audit" in md.read_text()
