"""Re-identification audit: how much identity information is left in the forget embeddings.

Retrieval metrics ask whether a forgotten person's images still cluster; an attacker who holds a
few labelled images of that person can do more: fit a classifier on them. The audit trains two
such attackers on the forget *train* embeddings (the images used for unlearning, labelled) and
tests them on the forget *test* embeddings (unseen images of the same people):

* ``knn_acc``: 1-nearest-neighbour by cosine similarity;
* ``probe_acc``: a multinomial logistic-regression linear probe (L2-regularised, lbfgs).

Both are accuracies over the forget identities only (chance = 1 / number of forget identities,
reported as ``chance``). An ideal unlearning leaves them near chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from jaxforget.eval.embed import Embeddings


def reid_audit(train: Embeddings, test: Embeddings, probe_c: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Attack accuracies of a k-NN and a linear probe trained on ``train``, tested on ``test``."""
    keep = np.isin(test.labels, train.labels)
    if not keep.any():
        raise ValueError("reid_audit: no test image belongs to an identity present in train")
    xt, yt = test.emb[keep], test.labels[keep]
    classes = np.unique(train.labels)
    nn = np.argmax(xt @ train.emb.T, axis=1)
    out: dict[str, Any] = {
        "knn_acc": float(np.mean(train.labels[nn] == yt)),
        "chance": 1.0 / len(classes),
        "num_queries": int(keep.sum()),
    }
    if len(classes) > 1:
        probe = LogisticRegression(C=probe_c, max_iter=2000, random_state=seed)
        probe.fit(train.emb, train.labels)
        out["probe_acc"] = float(np.mean(probe.predict(xt) == yt))
    return out
