"""Loading pretrained backbones: parity against the PyTorch reference models, round trips through
``.pth`` and orbax directories, and ``load_pretrained``'s config handling.

The PyTorch IResNet and MobileFaceNet (:mod:`jaxforget.testing.torch_reference`) get random
weights and non-trivial BatchNorm running statistics, are saved with ``torch.save`` and go through
the same path a user's file does (``load_pretrained`` -> safe reader -> ``torch_to_flax``).
"""

from __future__ import annotations

import collections
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxforget.io import checkpoint  # noqa: E402
from jaxforget.models import build_model, init_variables, load_pretrained, save_torch_backbone  # noqa: E402
from jaxforget.models.loading import ModelConfigError, model_config  # noqa: E402
from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.models.torch_layout import CheckpointMismatchError, flat_items  # noqa: E402
from jaxforget.testing.torch_reference import (  # noqa: E402
    TorchIResNet,
    TorchMbf,
    TorchMobileFaceNet,
    calibrate,
    randomize,
    torch_forward,
)
from jaxforget.testing.variables import random_variables, rel_error  # noqa: E402

torch.set_num_threads(2)
REL_TOL = 1e-4
SMALL = {"name": "iresnet18", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 32}
TINY = {"name": "iresnet18", "width_mult": 0.125, "input_size": (32, 32), "embedding_size": 16}


def flax_forward(bundle, variables, x_nhwc: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: bundle.module.apply(v, x, train=False))(variables, x_nhwc))


# ------------------------------------------------------------------------------------------------
# Parity


def test_iresnet18_full_width_parity_legacy_wrapped(tmp_path):
    """r18 at full width, 112x112, saved in the legacy format, wrapped and with 'module.' prefixes."""
    model = randomize(TorchIResNet(IRESNET_STAGES[18]), seed=0)
    wrapped = {"epoch": 3, "state_dict": collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())}
    path = tmp_path / "r18_legacy.pth"
    torch.save(wrapped, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)

    bundle, variables = load_pretrained({"name": "auto", "init": str(path)})
    assert bundle.name == "iresnet18" and bundle.input_size == (112, 112) and bundle.embedding_size == 512
    x = np.random.default_rng(0).normal(size=(2, 112, 112, 3)).astype(np.float32)
    err = rel_error(flax_forward(bundle, variables, x), torch_forward(model, x))
    print(f"\nparity iresnet18 (width 1.0, 112x112, fp32): relative error {err:.2e}")
    assert err <= REL_TOL


def test_iresnet50_reduced_width_parity_nonsquare(tmp_path):
    """r50 at width 0.25 on a non-square 64x48 input (checks the fc (C,H,W)->(H,W,C) permutation)."""
    model = randomize(TorchIResNet(IRESNET_STAGES[50], width_mult=0.25, embedding_size=64, input_size=(64, 48)), seed=1)
    path = tmp_path / "r50.pth"
    torch.save(model.state_dict(), path)
    assert zipfile.is_zipfile(path)

    with pytest.raises(CheckpointMismatchError, match="not a square"):
        load_pretrained({"name": "iresnet50", "init": str(path)})
    bundle, variables = load_pretrained({"name": "iresnet50", "init": str(path), "input_size": (64, 48)})
    assert bundle.module.width_mult == 0.25 and bundle.embedding_size == 64
    x = np.random.default_rng(1).normal(size=(3, 64, 48, 3)).astype(np.float32)
    err = rel_error(flax_forward(bundle, variables, x), torch_forward(model, x))
    print(f"\nparity iresnet50 (width 0.25, 64x48, fp32): relative error {err:.2e}")
    assert err <= REL_TOL


def test_mobilefacenet_parity(tmp_path):
    model = randomize(TorchMobileFaceNet(), seed=2)
    path = tmp_path / "mfn.ckpt"
    torch.save({"epoch": 1, "net_state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    bundle, variables = load_pretrained({"init": str(path)})
    assert bundle.name == "mobilefacenet" and bundle.input_size == (112, 96) and bundle.embedding_size == 128
    x = np.random.default_rng(2).normal(size=(2, 112, 96, 3)).astype(np.float32)
    err = rel_error(flax_forward(bundle, variables, x), torch_forward(model, x))
    print(f"\nparity mobilefacenet (112x96, fp32): relative error {err:.2e}")
    assert err <= REL_TOL


def test_mbf_pth_both_ways(tmp_path):
    """arcface_torch's mbf (width 0.25, 64x64): a .pth in gives PyTorch's embeddings; written back,
    PyTorch loads it strictly (same keys in the same order) and it reads back bit for bit."""
    x = np.random.default_rng(4).normal(size=(3, 64, 64, 3)).astype(np.float32)
    model = calibrate(randomize(TorchMbf(0.25, 32, (64, 64)), seed=4), x)
    path = tmp_path / "mbf.pth"
    torch.save(model.state_dict(), path)
    bundle, variables = load_pretrained({"name": "auto", "init": str(path)})
    assert (bundle.name, bundle.input_size, bundle.embedding_size, bundle.module.width_mult) == \
        ("mbf", (64, 64), 32, 0.25)
    err = rel_error(flax_forward(bundle, variables, x), torch_forward(model, x))
    print(f"\nparity mbf (width 0.25, 64x64, fp32): relative error {err:.2e}")
    assert err <= REL_TOL

    back_path = tmp_path / "back.pth"
    save_torch_backbone(bundle, variables, back_path)
    loaded = torch.load(back_path, weights_only=True)
    assert list(loaded) == list(model.state_dict())
    fresh = TorchMbf(0.25, 32, (64, 64)).eval()
    fresh.load_state_dict(loaded, strict=True)
    assert rel_error(torch_forward(fresh, x), torch_forward(model, x)) == 0
    _, back = load_pretrained({"name": "auto", "init": str(back_path)})
    for k, v in flat_items(jax.device_get(variables)):
        np.testing.assert_array_equal(np.asarray(v), dict(flat_items(back))[k], err_msg="/".join(k))


# ------------------------------------------------------------------------------------------------
# Round trips


def test_flax_to_pth_to_flax_exact_and_torch_loads_it(tmp_path):
    bundle, variables = random_variables(SMALL, seed=3)
    path = tmp_path / "export.pth"
    save_torch_backbone(bundle, variables, path)

    # PyTorch reads it (weights_only) into the InsightFace-layout model, strict: same keys and shapes.
    model = TorchIResNet(IRESNET_STAGES[18], width_mult=0.25, embedding_size=32, input_size=(32, 32)).eval()
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(model.state_dict())  # same keys, same order
    assert loaded["layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    model.load_state_dict(loaded, strict=True)
    assert torch.all(model.features.weight == 1)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    err = rel_error(torch_forward(model, x), flax_forward(bundle, variables, x))
    print(f"\nexported iresnet18 (width 0.25) run by PyTorch vs Flax: relative error {err:.2e}")
    assert err <= REL_TOL

    _, back = load_pretrained({**SMALL, "init": str(path)})
    flat_a = dict(flat_items(jax.device_get(variables)))
    flat_b = dict(flat_items(back))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), flat_b[k], err_msg="/".join(k))


def test_orbax_variables_round_trip_and_load_pretrained(tmp_path):
    bundle, variables = random_variables(SMALL, seed=4)
    checkpoint.save_variables(tmp_path / "ck", {**variables, "head": np.ones((3, 32), np.float32)},
                              {"model": bundle.config(), "note": "test"})
    got, meta = checkpoint.load_variables(tmp_path / "ck")
    assert meta["model"]["name"] == "iresnet18" and meta["note"] == "test"
    for k, v in flat_items(jax.device_get(variables)):
        np.testing.assert_array_equal(np.asarray(v), dict(flat_items(got))[k])
    # Rebuilt from the stored config alone; an explicit dtype override is honoured.
    b2, v2 = load_pretrained({"name": "", "init": str(tmp_path / "ck"), "dtype": "bfloat16"})
    assert b2.config()["width_mult"] == 0.25 and b2.config()["dtype"] == "bfloat16"
    assert set(v2) == {"params", "batch_stats"}  # the stored 'head' is not a backbone variable
    np.testing.assert_array_equal(got["head"], np.ones((3, 32), np.float32))
    # A field the checkpoint fixes, set to another value, is one line naming the value to use.
    with pytest.raises(ModelConfigError, match=r"fixes model.name=iresnet18 \(the config sets mobilefacenet\): set --config.model.name=iresnet18"):
        load_pretrained({"name": "mobilefacenet", "init": str(tmp_path / "ck")})
    with pytest.raises(ModelConfigError, match=r"model.width_mult=0.25 \(the config sets 0.5\)"):
        load_pretrained({"name": "iresnet18", "init": str(tmp_path / "ck"), "width_mult": 0.5})
    # Stored variables that do not fit the stored config still name every key.
    other = {**SMALL, "embedding_size": 16}
    checkpoint.save_variables(tmp_path / "bad", variables, {"model": other})
    with pytest.raises(CheckpointMismatchError, match=r"params/features/bias: checkpoint has \(32,\), the model expects \(16,\)"):
        load_pretrained({"init": str(tmp_path / "bad")})


def test_what_a_checkpoint_fixes_fills_the_unset_fields_and_a_conflict_is_one_line(tmp_path):
    """model_config reads a .pth's architecture without building the model: unset fields (None,
    'auto') come from it, set ones must agree (every disagreeing field named with its value)."""
    model = TorchIResNet(IRESNET_STAGES[18], width_mult=0.25, embedding_size=32, input_size=(32, 32))
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    fixed = {"name": "iresnet18", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 32}
    unset = {"name": "auto", "width_mult": None, "input_size": None, "embedding_size": None}
    got = model_config({**unset, "init": str(path), "dtype": "bfloat16"})
    assert {k: got[k] for k in fixed} == fixed and got["dtype"] == "bfloat16"
    assert model_config({**fixed, "name": "r18", "init": str(path)})["name"] == "iresnet18"
    with pytest.raises(ModelConfigError) as e:
        model_config({**unset, "init": str(path), "name": "iresnet50", "input_size": (48, 48)})
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.name=iresnet18 (the config sets iresnet50)" in msg
    assert "model.input_size=(32, 32) (the config sets (48, 48))" in msg
    assert "--config.model.name=iresnet18 --config.model.input_size='(32, 32)'" in msg
    # Without a checkpoint the family's defaults fill what is unset; 'auto' is the paper's model.
    assert model_config(unset) == {"name": "iresnet50", "width_mult": 1.0, "input_size": (112, 112),
                                   "embedding_size": 512}
    assert model_config({**unset, "name": "mobilefacenet", "embedding_size": 64})["embedding_size"] == 64


# ------------------------------------------------------------------------------------------------
# Random initialisation and config errors


def test_random_init_is_seeded():
    v0 = init_variables(build_model(TINY), seed=0)
    _, v0b = load_pretrained({**TINY, "seed": 0})
    _, v1 = load_pretrained({**TINY, "seed": 1})
    k0, k0b, k1 = (np.asarray(v["params"]["layer2_0"]["conv1"]["kernel"]) for v in (v0, v0b, v1))
    np.testing.assert_array_equal(k0, k0b)
    assert not np.allclose(k0, k1)
    np.testing.assert_array_equal(v0["params"]["layer1_0"]["prelu"]["slope"], 0.25)


def test_missing_init_is_named():
    with pytest.raises(FileNotFoundError, match="model.init '/nonexistent/x.pth' does not exist"):
        load_pretrained({**TINY, "init": "/nonexistent/x.pth"})
