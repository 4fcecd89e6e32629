"""Identity-subspace projection: the basis, the removal map, and its exact fold into a backbone."""

import functools

import jax
import numpy as np
import pytest

from jaxforget.methods import projection
from jaxforget.models import registry


def _perturbed_variables(bundle, seed):
    """Random-init variables with non-trivial output-layer BatchNorm statistics and biases, so the
    fold's algebra is exercised (fresh models have mean 0, var 1, bias 0)."""
    variables = jax.device_get(registry.init_variables(bundle, seed))
    rng = np.random.default_rng(seed)
    lin_path, bn_path = registry.FAMILIES[bundle.family].output_layer

    def perturb(tree, path, key, fn):
        node = tree
        for p in path:
            node = node[p]
        node[key] = fn(np.asarray(node[key])).astype(np.float32)

    d = bundle.embedding_size
    perturb(variables["batch_stats"], bn_path, "mean", lambda x: rng.normal(0, 0.5, d))
    perturb(variables["batch_stats"], bn_path, "var", lambda x: rng.uniform(0.2, 3.0, d))
    perturb(variables["params"], bn_path, "bias", lambda x: rng.normal(0, 0.3, d))
    if bundle.family == "mobilefacenet":
        perturb(variables["params"], bn_path, "scale", lambda x: rng.uniform(0.5, 2.0, d))
    else:
        perturb(variables["params"], lin_path, "bias", lambda x: rng.normal(0, 0.3, d))
    return variables


MODELS = [
    dict(name="mobilefacenet", width_mult=0.25, input_size=(32, 32), embedding_size=16),
    dict(name="iresnet18", width_mult=0.125, input_size=(32, 32), embedding_size=16),
]


@pytest.mark.parametrize("model_cfg", MODELS, ids=lambda c: c["name"])
def test_fold_equals_map_after_the_original_model(model_cfg):
    bundle = registry.build_model(model_cfg)
    apply = jax.jit(functools.partial(bundle.module.apply, train=False))  # one compile, three calls
    variables = _perturbed_variables(bundle, 0)
    x = np.random.default_rng(1).normal(size=(5, 32, 32, 3)).astype(np.float32)
    y = np.asarray(apply(variables, x), np.float64)
    m = np.random.default_rng(2).normal(size=(16, 16))
    folded = projection.fold_output_map(bundle.family, variables, m)
    y2 = np.asarray(apply(folded, x), np.float64)
    np.testing.assert_allclose(y2, y @ m.T, rtol=1e-4, atol=1e-4 * np.abs(y).max())
    # Same tree structure, shapes and dtypes: an ordinary checkpoint of the same model.
    assert jax.tree.structure(folded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(variables)):
        assert a.shape == b.shape and a.dtype == b.dtype
    # The input is not modified in place.
    y3 = np.asarray(apply(variables, x), np.float64)
    np.testing.assert_array_equal(y3, y)


def test_projection_removes_forget_centroids_and_keeps_their_orthogonal_complement():
    rng = np.random.default_rng(0)
    d, ids, per = 32, 4, 3
    cents = rng.normal(size=(ids, d))
    emb = np.repeat(cents, per, axis=0) + 0.3 * rng.normal(size=(ids * per, d))
    labels = np.repeat(np.arange(ids), per)
    q = projection.identity_basis(emb, labels)
    assert q.shape == (d, ids)
    np.testing.assert_allclose(q.T @ q, np.eye(ids), atol=1e-10)
    m = projection.removal_matrix(q)
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for lab in range(ids):  # each identity's centroid is mapped to zero
        np.testing.assert_allclose(m @ z[labels == lab].mean(0), 0, atol=1e-10)
    other = rng.normal(size=d)
    other -= q @ (q.T @ other)  # a direction orthogonal to every centroid is unchanged
    np.testing.assert_allclose(m @ other, other, atol=1e-10)
    np.testing.assert_allclose(m @ m, m, atol=1e-10)  # idempotent


def test_basis_drops_dependent_centroids_and_rejects_bad_input():
    e = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    q = projection.identity_basis(e, np.array([0, 0, 1, 2]))  # identity 2 repeats identity 0
    assert q.shape == (3, 2)
    with pytest.raises(ValueError, match="labels"):
        projection.identity_basis(e, np.array([0, 1]))
    with pytest.raises(ValueError, match="family"):
        projection.fold_output_map("vit", {"params": {}, "batch_stats": {}}, np.eye(3))
