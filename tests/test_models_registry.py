"""The model registry: config forms, names and errors, and the one table of family constants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxforget import ops
from jaxforget.models import (
    FAMILIES,
    IResNet,
    MobileFaceNet,
    build_model,
    canonical_name,
    family_of,
    module_order,
)
from jaxforget.models.iresnet import IRESNET_STAGES

TINY = {"name": "iresnet18", "width_mult": 0.125, "input_size": (32, 32), "embedding_size": 16}


def test_registry_config_forms_and_errors():
    cfg = ml_collections.ConfigDict({"name": "iresnet100", "width_mult": 1.0, "input_size": (112, 112),
                                     "embedding_size": 512, "dtype": "float32", "dropout": 0.0, "init": ""})
    bundle = build_model(cfg)
    assert bundle.name == "iresnet100" and tuple(bundle.module.stage_blocks) == IRESNET_STAGES[100]
    assert (bundle.pixel_mean, bundle.pixel_std) == (127.5, 127.5)
    assert build_model(bundle.config()).config() == bundle.config()
    assert canonical_name("R50") == "iresnet50" and canonical_name("IResNet200") == "iresnet200"
    with pytest.raises(ValueError, match="model.name 'resnet50' is not known"):
        build_model({"name": "resnet50"})
    with pytest.raises(ValueError, match=r"input_size \(100, 100\).*divisible by 16"):
        build_model({"name": "iresnet18", "input_size": (100, 100)})
    with pytest.raises(ValueError, match="model.dtype 'float64'"):
        build_model({"name": "iresnet18", "dtype": "float64"})
    bundle = build_model(TINY)
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\); got \(1, 64, 64, 3\)"):
        jax.eval_shape(lambda: bundle.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))


def test_one_family_table_decides_every_family_difference():
    assert canonical_name("MFN") == "mobilefacenet" and canonical_name(" MobileFaceNet ") == "mobilefacenet"
    with pytest.raises(ValueError, match=r"use one of iresnet18, iresnet34, iresnet50, iresnet100, iresnet200, "
                       r"mobilefacenet, mbf$"):
        canonical_name("r51")
    assert family_of("r50") is FAMILIES["iresnet"] and family_of("mfn") is FAMILIES["mobilefacenet"]
    assert family_of("MBF") is FAMILIES["mbf"] and canonical_name("mbf") == "mbf"

    mfn = build_model({"name": "mfn"})
    assert isinstance(mfn.module, MobileFaceNet) and mfn.family == "mobilefacenet"
    assert (mfn.input_size, mfn.embedding_size, mfn.pixel_mean, mfn.pixel_std) == ((112, 96), 128, 127.5, 128.0)
    assert mfn.fixed_parameters() == {}
    r18 = build_model({"name": "r18", "embedding_size": 16})
    assert isinstance(r18.module, IResNet) and r18.family == "iresnet"
    assert (r18.input_size, r18.pixel_std) == ((112, 112), 127.5)
    assert r18.fixed_parameters() == {"features.weight": (16,)}
    assert r18.module == IResNet(stage_blocks=IRESNET_STAGES[18], embedding_size=16, dtype="float32")

    # The output layer each family names is a real module of it.
    for bundle in (build_model(TINY), build_model({"name": "mobilefacenet", "width_mult": 0.25})):
        order = module_order(bundle)
        for path in FAMILIES[bundle.family].output_layer:
            assert path in order, (bundle.name, path)


def test_normalize_is_the_shared_pixel_formula():
    images = np.random.default_rng(0).integers(0, 256, (2, 112, 96, 3), dtype=np.uint8)
    bundle = build_model({"name": "mobilefacenet"})
    got = bundle.normalize(images)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, ops.normalize_images(images, 127.5, 128.0))
    np.testing.assert_array_equal(got, (images.astype(np.float32) - np.float32(127.5)) / np.float32(128.0))
