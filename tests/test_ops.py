"""The shared array operations: pixel normalisation and L2 normalisation."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.ops import l2_normalize, normalize_images


def test_normalize_is_jittable():
    x = np.array([[[[0, 127, 255]]]], np.uint8)
    y = jax.jit(normalize_images, static_argnums=())(x, 127.5, 128.0)
    np.testing.assert_allclose(np.asarray(y), (x.astype(np.float32) - 127.5) / 128.0, rtol=1e-6)
    assert y.dtype == jnp.float32
    z = normalize_images(x, (0.0, 1.0, 2.0), (1.0, 1.0, 1.0), dtype=jnp.bfloat16)
    assert z.dtype == jnp.bfloat16 and float(z[0, 0, 0, 2]) == 253.0


def test_normalize_per_channel_and_dtype():
    x = np.full((1, 2, 2, 3), 200, np.uint8)
    y = normalize_images(x, (100.0, 150.0, 200.0), (50.0, 25.0, 10.0), dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32)[0, 0, 0], [2.0, 2.0, 0.0])


def test_l2_normalize_unit_rows_and_zero_vector_stays_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
    y = np.asarray(l2_normalize(x))
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(y[2]), 1.0, rtol=1e-6)
    # The gradient at the zero vector is finite (no NaN from 0 / 0).
    g = jax.grad(lambda v: jnp.sum(l2_normalize(v)))(jnp.zeros((1, 4)))
    assert np.all(np.isfinite(np.asarray(g)))


def test_l2_normalize_keeps_dtype_and_axis():
    x = jnp.ones((2, 3, 4), jnp.bfloat16)
    y = l2_normalize(x, axis=1)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.square(y.astype(jnp.float32)), axis=1)), 1.0,
                               rtol=1e-2)
