"""The Flax MobileFaceNet: shapes of the released CASIA model."""

from __future__ import annotations

import jax

from jaxforget.models import abstract_variables, build_model


def test_mobilefacenet_shapes():
    bundle = build_model({"name": "mobilefacenet"})
    assert bundle.input_size == (112, 96) and bundle.embedding_size == 128
    assert (bundle.pixel_mean, bundle.pixel_std) == (127.5, 128.0)
    shapes = abstract_variables(bundle)
    assert shapes["params"]["linear7"]["conv"]["kernel"].shape == (7, 6, 1, 512)
    assert shapes["params"]["blocks_14"]["conv_6"]["kernel"].shape == (1, 1, 256, 128)
    assert len([k for k in shapes["params"] if k.startswith("blocks_")]) == 15
    out = jax.eval_shape(lambda v, x: bundle.module.apply(v, x), shapes, bundle.dummy_input(3))
    assert out.shape == (3, 128)
