"""PyTorch <-> Flax conversion: parity against PyTorch models written here, round trips, safety.

The PyTorch IResNet and MobileFaceNet below are written from FORMATS.md with InsightFace's (and the
CASIA MobileFaceNet checkpoint's) parameter names. They get random weights and non-trivial
BatchNorm running statistics, are saved with ``torch.save`` and go through the same path a user's
file does (``load_pretrained`` -> safe reader -> ``torch_to_flax``).
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from jaxforget import checkpoint, convert  # noqa: E402
from jaxforget.models import abstract_variables, build_model, load_pretrained, module_order  # noqa: E402
from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.models.mobilefacenet import MOBILEFACENET_SETTING  # noqa: E402

torch.set_num_threads(2)
REL_TOL = 1e-4


# ------------------------------------------------------------------------------------------------
# Reference PyTorch models (InsightFace parameter names)


class TorchIBasicBlock(tnn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: tnn.Module | None):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = tnn.PReLU(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class TorchIResNet(tnn.Module):
    def __init__(self, layers, width_mult=1.0, embedding_size=512, input_size=(112, 112)):
        super().__init__()
        widths = [max(1, int(round(c * width_mult))) for c in (64, 128, 256, 512)]
        self.conv1 = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = tnn.PReLU(widths[0])
        inplanes = widths[0]
        for stage, (planes, blocks) in enumerate(zip(widths, layers), start=1):
            mods = []
            for i in range(blocks):
                down = None
                if i == 0:
                    down = tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, 2, bias=False), tnn.BatchNorm2d(planes, eps=1e-5))
                mods.append(TorchIBasicBlock(inplanes, planes, 2 if i == 0 else 1, down))
                inplanes = planes
            setattr(self, f"layer{stage}", tnn.Sequential(*mods))
        self.bn2 = tnn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = tnn.Dropout(p=0.0)
        cells = (input_size[0] // 16) * (input_size[1] // 16)
        self.fc = tnn.Linear(widths[3] * cells, embedding_size)
        self.features = tnn.BatchNorm1d(embedding_size, eps=1e-5)
        tnn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


class TorchConvBlock(tnn.Module):
    def __init__(self, inp, oup, k, s, p, dw=False, linear=False):
        super().__init__()
        self.linear = linear
        self.conv = tnn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = tnn.BatchNorm2d(oup)
        if not linear:
            self.prelu = tnn.PReLU(oup)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class TorchBottleneck(tnn.Module):
    def __init__(self, inp, oup, stride, expansion):
        super().__init__()
        self.connect = stride == 1 and inp == oup
        h = inp * expansion
        self.conv = tnn.Sequential(
            tnn.Conv2d(inp, h, 1, 1, 0, bias=False), tnn.BatchNorm2d(h), tnn.PReLU(h),
            tnn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), tnn.BatchNorm2d(h), tnn.PReLU(h),
            tnn.Conv2d(h, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.connect else self.conv(x)


class TorchMobileFaceNet(tnn.Module):
    def __init__(self, embedding_size=128):
        super().__init__()
        self.conv1 = TorchConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = TorchConvBlock(64, 64, 3, 1, 1, dw=True)
        blocks, inp = [], 64
        for t, c, n, s in MOBILEFACENET_SETTING:
            for i in range(n):
                blocks.append(TorchBottleneck(inp, c, s if i == 0 else 1, t))
                inp = c
        self.blocks = tnn.Sequential(*blocks)
        self.conv2 = TorchConvBlock(128, 512, 1, 1, 0)
        self.linear7 = TorchConvBlock(512, 512, (7, 6), 1, 0, dw=True, linear=True)
        self.linear1 = TorchConvBlock(512, embedding_size, 1, 1, 0, linear=True)

    def forward(self, x):
        x = self.linear1(self.linear7(self.conv2(self.blocks(self.dw_conv1(self.conv1(x))))))
        return x.view(x.shape[0], -1)


def randomize(model: tnn.Module, seed: int) -> tnn.Module:
    """Random weights and running statistics far from the defaults; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                n = m.num_features
                if name != "features":  # InsightFace keeps features.weight at 1
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, tnn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (tnn.Conv2d, tnn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def torch_forward(model: tnn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


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

    with pytest.raises(convert.CheckpointMismatchError, match="not a square"):
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


# ------------------------------------------------------------------------------------------------
# Round trips and the CLI


SMALL = {"name": "iresnet18", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 32}


def _random_flax(cfg, seed):
    """Random Flax variables (host numpy, no compilation) with non-trivial running statistics."""
    bundle = build_model(cfg)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return rng.normal(0, (2.0 / fan_in) ** 0.5, shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape)
        if name == "slope":
            return rng.uniform(0.0, 0.5, shape)
        return rng.normal(0, 0.2, shape)  # bias, mean

    shapes = abstract_variables(bundle)
    variables = jax.tree_util.tree_map_with_path(lambda p, l: draw(p, l).astype(np.float32), shapes)
    return bundle, dict(variables)


def test_flax_to_pth_to_flax_exact_and_torch_loads_it(tmp_path):
    bundle, variables = _random_flax(SMALL, seed=3)
    sd = convert.flax_to_torch(variables, bundle.fixed_parameters(), module_order(bundle))
    path = tmp_path / "export.pth"
    convert.save_torch_state_dict(sd, path)

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
    flat_a = dict(convert._flat(jax.device_get(variables)))
    flat_b = dict(convert._flat(back))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), flat_b[k], err_msg="/".join(k))


def test_orbax_variables_round_trip_and_load_pretrained(tmp_path):
    bundle, variables = _random_flax(SMALL, seed=4)
    checkpoint.save_variables(tmp_path / "ck", {**variables, "head": np.ones((3, 32), np.float32)},
                              {"model": bundle.config(), "note": "test"})
    got, meta = checkpoint.load_variables(tmp_path / "ck")
    assert meta["model"]["name"] == "iresnet18" and meta["note"] == "test"
    for k, v in convert._flat(jax.device_get(variables)):
        np.testing.assert_array_equal(np.asarray(v), dict(convert._flat(got))[k])
    # Rebuilt from the stored config alone; an explicit dtype override is honoured.
    b2, v2 = load_pretrained({"name": "", "init": str(tmp_path / "ck"), "dtype": "bfloat16"})
    assert b2.config()["width_mult"] == 0.25 and b2.config()["dtype"] == "bfloat16"
    assert set(v2) == {"params", "batch_stats"}  # the stored 'head' is not a backbone variable
    np.testing.assert_array_equal(got["head"], np.ones((3, 32), np.float32))
    with pytest.raises(ValueError, match="holds a iresnet18"):
        load_pretrained({"name": "mobilefacenet", "init": str(tmp_path / "ck")})
    with pytest.raises(convert.CheckpointMismatchError, match=r"params/layer1_0/conv1/kernel: checkpoint has \(3, 3, 16, 16\), the model expects \(3, 3, 32, 32\)"):
        load_pretrained({"name": "iresnet18", "init": str(tmp_path / "ck"), "width_mult": 0.5})


def test_cli_converts_and_exports(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_insightface", pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_insightface.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    model = randomize(TorchIResNet(IRESNET_STAGES[18], width_mult=0.25, embedding_size=32, input_size=(32, 32)), seed=5)
    src = tmp_path / "small.pth"
    torch.save(model.state_dict(), src)
    assert cli.main(["--input", str(src), "--output", str(tmp_path / "flax")]) == 0
    out = capsys.readouterr().out
    n_params = sum(p.numel() for p in model.parameters())
    n_keys = len(model.state_dict())
    n_bn = sum(isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)) for m in model.modules())
    print(out)
    assert "iresnet (depth 18)" in out
    assert f"= {n_params:,}" in out
    assert f"keys converted:     {n_keys - n_bn - 1} of {n_keys}" in out

    assert cli.main(["--to-torch", "--input", str(tmp_path / "flax"), "--output", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(back[k], v, rtol=0, atol=0, msg=k)

    assert cli.main(["--input", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Detection, key/shape errors


@pytest.mark.parametrize("depth", sorted(IRESNET_STAGES))
def test_detect_depth_from_keys(depth):
    with torch.device("meta"):
        model = TorchIResNet(IRESNET_STAGES[depth])
    info = convert.detect_arch(model.state_dict())
    assert (info.name, info.depth, info.width_mult, info.input_size, info.embedding_size) == (
        f"iresnet{depth}", depth, 1.0, (112, 112), 512)
    if depth == 50:
        n = sum(p.numel() for p in model.parameters())
        stats = sum(b.numel() for k, b in model.state_dict().items() if k.endswith(("running_mean", "running_var")))
        assert (len(model.state_dict()), n, stats) == (475, 43_590_848, 38_144)  # FORMATS.md's r50 facts
        shapes = abstract_variables(build_model({"name": "iresnet50"}))
        flax_n = convert.count_elements(shapes["params"]) + sum(
            int(np.prod(s)) for s in build_model({"name": "iresnet50"}).fixed_parameters().values())
        assert flax_n == n and convert.count_elements(shapes["batch_stats"]) == stats


def test_mismatch_errors_name_key_and_both_shapes(tmp_path):
    bundle = build_model(SMALL)
    template = abstract_variables(bundle)
    sd = convert.flax_to_torch(_random_flax(SMALL, 6)[1], bundle.fixed_parameters())
    bad = collections.OrderedDict(sd)
    del bad["layer2.0.conv1.weight"]
    bad["layer3.1.bn2.weight"] = np.ones(7, np.float32)
    bad["head.extra"] = np.zeros((2, 3), np.float32)
    with pytest.raises(convert.CheckpointMismatchError) as e:
        convert.torch_to_flax(bad, template, bundle.fixed_parameters(), source="bad.pth")
    msg = str(e.value)
    print(msg)
    assert "bad.pth" in msg
    assert "missing key 'layer2.0.conv1.weight'" in msg and "(32, 16, 3, 3)" in msg
    assert "shape mismatch for key 'layer3.1.bn2.weight': checkpoint has (7,), the model expects (64,)" in msg
    assert "unexpected key 'head.extra' with shape (2, 3)" in msg

    not_ones = collections.OrderedDict(sd)
    not_ones["features.weight"] = np.full(32, 2.0, np.float32)
    with pytest.raises(convert.CheckpointMismatchError, match="'features.weight' must be all ones"):
        convert.torch_to_flax(not_ones, template, bundle.fixed_parameters())

    with pytest.raises(convert.CheckpointMismatchError, match="cannot tell the architecture"):
        convert.detect_arch({"foo.weight": np.zeros(3)})
    with pytest.raises(convert.CheckpointFormatError, match="no state_dict found"):
        convert.extract_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}}, "opt.pth")


# ------------------------------------------------------------------------------------------------
# Safety


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payload_really_runs_under_plain_pickle(tmp_path):
    """Control: the crafted pickle does execute code when loaded without restrictions."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"conv1.weight": _Payload(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["legacy", "zip", "legacy_header"])
def test_code_running_checkpoint_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{fmt}.pth"
    evil = collections.OrderedDict({"conv1.weight": torch.zeros(2), "bn1.bias": _Payload(marker)})
    if fmt == "zip":
        torch.save(evil, path)  # a real torch zip whose data.pkl names posix.system
    elif fmt == "legacy":
        torch.save(evil, path, _use_new_zipfile_serialization=False)
    else:  # the payload in the very first pickle of a legacy-looking file
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(convert.UnsafeCheckpointError, match=r"refused to load.*system") as e:
        convert.read_torch_checkpoint(path)
    assert str(path) in str(e.value)
    with pytest.raises(convert.UnsafeCheckpointError):
        load_pretrained({"init": str(path)})
    assert not marker.exists(), "the checkpoint's code ran"


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(convert.CheckpointFormatError, match="junk.pth"):
        convert.read_torch_checkpoint(path)
    zpath = tmp_path / "other.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(convert.CheckpointFormatError, match="data.pkl"):
        convert.read_torch_checkpoint(zpath)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(100)}, good, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(convert.CheckpointFormatError, match="cut.pth: truncated file"):
        convert.read_torch_checkpoint(cut)
    with pytest.raises(FileNotFoundError, match="nothere.pth does not exist"):
        convert.read_torch_checkpoint(tmp_path / "nothere.pth")


def test_reader_matches_torch_on_strided_and_typed_tensors(tmp_path):
    """Non-contiguous views, offsets, shared storages and several dtypes read exactly as torch does."""
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    obj = {
        "t": base.t(),  # strided view
        "slice": base[2:4, 3:],  # offset into a shared storage
        "half": torch.randn(3, 4).half(),
        "long": torch.tensor(7, dtype=torch.int64),
        "bool": torch.tensor([True, False]),
        "bf16": torch.randn(5).bfloat16(),
    }
    for legacy in (False, True):
        path = tmp_path / f"mix_{legacy}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        got = convert.read_torch_checkpoint(path)
        for k, v in obj.items():
            want = v.float().numpy() if k == "bf16" else v.numpy()
            np.testing.assert_array_equal(np.asarray(got[k], want.dtype), want, err_msg=f"{k} legacy={legacy}")
            assert got[k].shape == tuple(v.shape)
