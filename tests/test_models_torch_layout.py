"""Architecture detection from PyTorch keys, and the key/shape errors of the layout mapping."""

from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxforget.models import FAMILIES, abstract_variables, build_model, count_elements  # noqa: E402
from jaxforget.models import torch_layout  # noqa: E402
from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.testing.torch_reference import TorchIResNet, TorchMobileFaceNet  # noqa: E402
from jaxforget.testing.variables import random_variables  # noqa: E402

SMALL = {"name": "iresnet18", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 32}


@pytest.mark.parametrize("depth", sorted(IRESNET_STAGES))
def test_detect_depth_from_keys(depth):
    with torch.device("meta"):
        model = TorchIResNet(IRESNET_STAGES[depth])
    info = torch_layout.detect_arch(model.state_dict())
    assert (info.name, info.depth, info.width_mult, info.input_size, info.embedding_size) == (
        f"iresnet{depth}", depth, 1.0, (112, 112), 512)
    assert info.family == "iresnet"
    if depth == 50:
        n = sum(p.numel() for p in model.parameters())
        stats = sum(b.numel() for k, b in model.state_dict().items() if k.endswith(("running_mean", "running_var")))
        assert (len(model.state_dict()), n, stats) == (475, 43_590_848, 38_144)  # docs/FORMATS.md's r50 facts
        shapes = abstract_variables(build_model({"name": "iresnet50"}))
        flax_n = count_elements(shapes["params"]) + sum(
            int(np.prod(s)) for s in build_model({"name": "iresnet50"}).fixed_parameters().values())
        assert flax_n == n and count_elements(shapes["batch_stats"]) == stats


def test_detect_mobilefacenet_and_insisted_family():
    with torch.device("meta"):
        sd = TorchMobileFaceNet().state_dict()
    info = torch_layout.detect_arch(sd)
    assert (info.name, info.family, info.width_mult, info.input_size, info.embedding_size, info.depth) == (
        "mobilefacenet", "mobilefacenet", 1.0, (112, 96), 128, None)
    assert torch_layout.detect_arch(sd, "mobilefacenet", (112, 96)) == info
    with pytest.raises(torch_layout.CheckpointMismatchError, match=r"fixes the input at \(112, 96\), not the requested \(112, 112\)"):
        torch_layout.detect_arch(sd, "mobilefacenet", (112, 112))
    with pytest.raises(torch_layout.CheckpointMismatchError, match=r"blocks per stage \[0, 0, 0, 0\] match no IResNet"):
        torch_layout.detect_arch(sd, "iresnet")
    with pytest.raises(ValueError, match="arch 'resnet' is not one of 'auto', 'iresnet', 'mobilefacenet'"):
        torch_layout.detect_arch(sd, "resnet")
    assert list(torch_layout.TORCH_KEYS) == list(FAMILIES)  # one row per family


def test_mismatch_errors_name_key_and_both_shapes(tmp_path):
    bundle = build_model(SMALL)
    template = abstract_variables(bundle)
    sd = torch_layout.flax_to_torch(random_variables(SMALL, 6)[1], bundle.fixed_parameters())
    bad = collections.OrderedDict(sd)
    del bad["layer2.0.conv1.weight"]
    bad["layer3.1.bn2.weight"] = np.ones(7, np.float32)
    bad["head.extra"] = np.zeros((2, 3), np.float32)
    with pytest.raises(torch_layout.CheckpointMismatchError) as e:
        torch_layout.torch_to_flax(bad, template, bundle.fixed_parameters(), source="bad.pth")
    msg = str(e.value)
    print(msg)
    assert "bad.pth" in msg
    assert "missing key 'layer2.0.conv1.weight'" in msg and "(32, 16, 3, 3)" in msg
    assert "shape mismatch for key 'layer3.1.bn2.weight': checkpoint has (7,), the model expects (64,)" in msg
    assert "unexpected key 'head.extra' with shape (2, 3)" in msg

    not_ones = collections.OrderedDict(sd)
    not_ones["features.weight"] = np.full(32, 2.0, np.float32)
    with pytest.raises(torch_layout.CheckpointMismatchError, match="'features.weight' must be all ones"):
        torch_layout.torch_to_flax(not_ones, template, bundle.fixed_parameters())

    with pytest.raises(torch_layout.CheckpointMismatchError, match="cannot tell the architecture"):
        torch_layout.detect_arch({"foo.weight": np.zeros(3)})


def test_long_problem_lists_are_cut_at_25():
    problems = [f"problem {i}" for i in range(30)]
    with pytest.raises(torch_layout.CheckpointMismatchError) as e:
        torch_layout.raise_mismatch(problems, "x.pth: 30 problem(s)", "Fix it.")
    assert str(e.value) == ("x.pth: 30 problem(s):\n  " + "\n  ".join(problems[:25])
                            + "\n  ... and 5 more\nFix it.")
    torch_layout.raise_mismatch([], "nothing", "nothing")  # no problems: no error
