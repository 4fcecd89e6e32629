"""tools/convert_insightface.py: PyTorch -> orbax -> PyTorch through the command line."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.testing.torch_reference import TorchIResNet, randomize  # noqa: E402
from tools import convert_insightface as cli  # noqa: E402

torch.set_num_threads(2)


def test_cli_converts_and_exports(tmp_path, capsys):
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


def test_cli_onnx_in_and_out(tmp_path, capsys):
    """An arcface_torch-style ONNX file -> orbax (checked against onnxruntime) -> ONNX again."""
    pytest.importorskip("onnxruntime")
    import json

    import numpy as np

    from jaxforget.io import onnx_format
    from jaxforget.models import onnx_export
    from jaxforget.testing.torch_reference import export_onnx_like_arcface_torch

    model = randomize(TorchIResNet(IRESNET_STAGES[18], width_mult=0.125, embedding_size=16, input_size=(32, 32)), seed=6)
    export_onnx_like_arcface_torch(model, tmp_path / "zoo.onnx", (32, 32))
    assert cli.main(["--input", str(tmp_path / "zoo.onnx"), "--output", str(tmp_path / "flax")]) == 0
    out = capsys.readouterr().out
    assert "iresnet (depth 18)" in out and "onnxruntime vs flax on 2 random images" in out

    assert cli.main(["--to-onnx", "--input", str(tmp_path / "flax"), "--output", str(tmp_path / "out.onnx"),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parity"]["max_abs_normalized"] <= 1e-4 and summary["name"] == "iresnet18"
    blob = onnx_export.insightface_blob(np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    np.testing.assert_allclose(onnx_format.run_onnx(tmp_path / "out.onnx", blob)[0],
                               onnx_format.run_onnx(tmp_path / "zoo.onnx", blob)[0], rtol=1e-4, atol=1e-4)

    (tmp_path / "cut.onnx").write_bytes((tmp_path / "zoo.onnx").read_bytes()[:1000])
    assert cli.main(["--input", str(tmp_path / "cut.onnx"), "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cut.onnx" in err and len(err.strip().splitlines()) == 1
