"""Boundary Shrink (``jaxforget.methods.boundary_shrink``): its FGSM labels."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxforget import losses
from jaxforget import methods as M
from tests.methods_fixtures import C, make_part, setup


def test_boundary_shrink_label_never_true_label():
    net, variables, head, ctx = setup()
    frozen = lambda x: net.apply(variables, x, train=False)  # noqa: E731
    for seed in range(5):
        part = make_part(seed, np.arange(24) % C)
        x = M.normalize_images(jnp.asarray(part["image"]), ctx)
        y_nb = losses.boundary_shrink_labels(frozen, x, head, part["label"], 0.1,
                                             clip=(-1.0, 1.0))
        assert not np.any(np.asarray(y_nb) == part["label"])
        # It is the nearest wrong class of the adversarial image, not just any wrong class.
        x_adv = losses.fgsm(frozen, x, head, part["label"], 0.1, clip=(-1.0, 1.0))
        cos = np.array(losses.cosine_logits(frozen(x_adv), head))
        cos[np.arange(24), part["label"]] = -np.inf
        np.testing.assert_array_equal(np.asarray(y_nb), cos.argmax(1))
