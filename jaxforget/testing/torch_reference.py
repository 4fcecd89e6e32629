"""PyTorch reference models with InsightFace's parameter names: the IResNet of arcface_torch
(``backbones/iresnet.py``), the CASIA MobileFaceNet of the released ``068.ckpt`` and arcface_torch's
MobileFaceNet ``mbf`` as ``w600k_mbf.onnx`` holds it (:mod:`jaxforget.models.mbf`).

They are the other side of every PyTorch comparison: the conversion tests give them random
weights, save them with ``torch.save`` and check that the Flax models reproduce their outputs;
the benchmarks load jaxforget's initial weights into them (``state_dict`` keys and order match
:func:`jaxforget.models.torch_state_dict`) and time them. Needs PyTorch; nothing in the package
imports this module.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from jaxforget.models.iresnet import STAGE_WIDTHS, scaled_width
from jaxforget.models.mbf import MBF_LAYERS, MBF_REDUCE, MBF_SEP, MBF_STEM
from jaxforget.models.mobilefacenet import MOBILEFACENET_SETTING


class TorchIBasicBlock(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu -> conv2 (stride) -> bn3, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class TorchIResNet(nn.Module):
    """InsightFace's IResNet for any blocks per stage, width multiplier, embedding and input size.

    ``layers`` is the blocks per stage (``IRESNET_STAGES[depth]``, or any other tuple); widths are
    ``scaled_width(64/128/256/512, width_mult)`` as in the Flax model. ``fc`` and ``features`` run
    in float32 with autocast off, as InsightFace does under mixed precision (in float32 this
    changes nothing). ``features.weight`` is fixed at ones and not trainable.
    """

    def __init__(
        self,
        layers: Sequence[int],
        width_mult: float = 1.0,
        embedding_size: int = 512,
        input_size: tuple[int, int] = (112, 112),
    ):
        super().__init__()
        widths = [scaled_width(c, width_mult) for c in STAGE_WIDTHS]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for stage, (planes, blocks) in enumerate(zip(widths, layers), start=1):
            mods = []
            for i in range(blocks):
                down = None
                if i == 0:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
                mods.append(TorchIBasicBlock(inplanes, planes, 2 if i == 0 else 1, down))
                inplanes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*mods))
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        cells = (input_size[0] // 16) * (input_size[1] // 16)
        self.fc = nn.Linear(widths[3] * cells, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        with torch.autocast(x.device.type, enabled=False):
            return self.features(self.fc(self.dropout(x.float())))


class TorchConvBlock(nn.Module):
    """conv -> bn (-> prelu unless ``linear``); ``dw``: depthwise."""

    def __init__(self, inp, oup, k, s, p, dw=False, linear=False):
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        if not linear:
            self.prelu = nn.PReLU(oup)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class TorchBottleneck(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1, residual when shapes allow."""

    def __init__(self, inp, oup, stride, expansion):
        super().__init__()
        self.connect = stride == 1 and inp == oup
        h = inp * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(inp, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.PReLU(h),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.PReLU(h),
            nn.Conv2d(h, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.connect else self.conv(x)


class TorchMobileFaceNet(nn.Module):
    """The CASIA MobileFaceNet at 112x96 (key names of ``068.ckpt``)."""

    def __init__(self, embedding_size=128):
        super().__init__()
        self.conv1 = TorchConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = TorchConvBlock(64, 64, 3, 1, 1, dw=True)
        blocks, inp = [], 64
        for t, c, n, s in MOBILEFACENET_SETTING:
            for i in range(n):
                blocks.append(TorchBottleneck(inp, c, s if i == 0 else 1, t))
                inp = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = TorchConvBlock(128, 512, 1, 1, 0)
        self.linear7 = TorchConvBlock(512, 512, (7, 6), 1, 0, dw=True, linear=True)
        self.linear1 = TorchConvBlock(512, embedding_size, 1, 1, 0, linear=True)

    def forward(self, x):
        x = self.linear1(self.linear7(self.conv2(self.blocks(self.dw_conv1(self.conv1(x))))))
        return x.view(x.shape[0], -1)


class TorchMbfBlock(nn.Module):
    """arcface_torch's ConvBlock (conv, bn, prelu) or, with ``linear``, LinearBlock (conv, bn),
    as ``layers.0 / .1 / .2``."""

    def __init__(self, inp, oup, k=1, s=1, p=0, groups=1, linear=False):
        super().__init__()
        mods = [nn.Conv2d(inp, oup, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(oup)]
        self.layers = nn.Sequential(*mods, *([] if linear else [nn.PReLU(oup)]))

    def forward(self, x):
        return self.layers(x)


class TorchMbfDepthWise(nn.Module):
    def __init__(self, inp, oup, hidden, stride, residual):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(TorchMbfBlock(inp, hidden), TorchMbfBlock(hidden, hidden, 3, stride, 1, hidden),
                                    TorchMbfBlock(hidden, oup, linear=True))

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class TorchMbfResidual(nn.Module):
    def __init__(self, c, hidden, blocks):
        super().__init__()
        self.layers = nn.Sequential(*[TorchMbfDepthWise(c, c, hidden, 1, True) for _ in range(blocks)])

    def forward(self, x):
        return self.layers(x)


class TorchMbf(nn.Module):
    """arcface_torch's MobileFaceNet with ``w600k_mbf``'s head (1x1 conv to 64, flatten, ``fc``
    with a bias, ``features`` BatchNorm1d with its weight fixed at ones), any width multiplier."""

    def __init__(self, width_mult: float = 1.0, embedding_size: int = 512, input_size: tuple[int, int] = (112, 112)):
        super().__init__()
        w = lambda c: scaled_width(c, width_mult)  # noqa: E731
        mods, c = [TorchMbfBlock(3, w(MBF_STEM), 3, 2, 1)], w(MBF_STEM)
        for kind, out, hidden, blocks in MBF_LAYERS:
            if kind == "conv":
                mods.append(TorchMbfBlock(c, w(out), 3, 1, 1, w(hidden)))
            elif kind == "down":
                mods.append(TorchMbfDepthWise(c, w(out), w(hidden), 2, False))
            else:
                mods.append(TorchMbfResidual(w(out), w(hidden), blocks))
            c = w(out)
        self.layers = nn.ModuleList(mods)
        self.conv_sep = TorchMbfBlock(c, w(MBF_SEP))
        self.conv_reduce = TorchMbfBlock(w(MBF_SEP), w(MBF_REDUCE))
        self.fc = nn.Linear(w(MBF_REDUCE) * (input_size[0] // 16) * (input_size[1] // 16), embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.fc(torch.flatten(self.conv_reduce(self.conv_sep(x)), 1)))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and running statistics far from the defaults; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                if name != "features":  # InsightFace keeps features.weight at 1
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def torch_forward(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    """The model's output on NHWC numpy images (transposed to NCHW), without gradients."""
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def calibrate(model: nn.Module, images_nhwc: np.ndarray) -> nn.Module:
    """Sets every BatchNorm's running statistics to the model's own batch statistics on
    ``images_nhwc`` (normalised floats; the unbiased variance, as training leaves it): the activations and the
    embedding then have the unit scale of a trained model's, not the thousands a random model
    reaches, so absolute differences read like those of a real one. Eval mode."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    torch_forward(model, images_nhwc)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def export_onnx_like_arcface_torch(model: nn.Module, path, input_size: tuple[int, int], opset: int = 11) -> None:
    """Writes ``model`` to ``path`` as arcface_torch's ``torch2onnx.py`` does: the legacy
    (TorchScript) exporter in eval mode, input ``data`` of shape (1, 3, H, W), initializers not
    listed as inputs, then the batch dimension renamed ``'None'`` (needs onnx)."""
    import warnings

    import onnx

    img = torch.zeros(1, 3, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "the legacy TorchScript-based exporter"
        torch.onnx.export(model.eval(), img, str(path), input_names=["data"], keep_initializers_as_inputs=False,
                          verbose=False, opset_version=opset, dynamo=False)
    exported = onnx.load(str(path))
    exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(exported, str(path))
