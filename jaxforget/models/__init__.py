"""Face backbones (InsightFace IResNet, MobileFaceNet), margin heads and the model registry."""

from jaxforget.models.heads import CosFaceHead, cosine_logits, margin_logits, margin_loss
from jaxforget.models.iresnet import IRESNET_STAGES, IBasicBlock, IResNet, fixed_parameter_shapes, iresnet
from jaxforget.models.layers import PReLU
from jaxforget.models.mobilefacenet import MobileFaceNet
from jaxforget.models.registry import (
    ModelBundle,
    abstract_variables,
    build_model,
    canonical_name,
    init_variables,
    load_pretrained,
    module_order,
)

__all__ = [
    "CosFaceHead",
    "IBasicBlock",
    "IRESNET_STAGES",
    "IResNet",
    "MobileFaceNet",
    "ModelBundle",
    "PReLU",
    "abstract_variables",
    "build_model",
    "canonical_name",
    "cosine_logits",
    "fixed_parameter_shapes",
    "init_variables",
    "iresnet",
    "load_pretrained",
    "margin_logits",
    "margin_loss",
    "module_order",
]
