"""Face backbones (InsightFace IResNet, MobileFaceNet), margin heads, the model registry (building)
and loading pretrained variables (PyTorch files and orbax directories)."""

from jaxforget.models.heads import CosFaceHead, cosine_logits, margin_logits, margin_loss
from jaxforget.models.iresnet import IRESNET_STAGES, IBasicBlock, IResNet, fixed_parameter_shapes, iresnet
from jaxforget.models.layers import PReLU
from jaxforget.models.loading import (
    convert_torch_checkpoint,
    count_elements,
    export_torch_checkpoint,
    load_pretrained,
    save_torch_backbone,
    torch_state_dict,
)
from jaxforget.models.mobilefacenet import MobileFaceNet
from jaxforget.models.registry import (
    FAMILIES,
    Family,
    ModelBundle,
    abstract_variables,
    build_model,
    canonical_name,
    family_of,
    init_variables,
    module_order,
)
from jaxforget.models.torch_layout import CheckpointMismatchError, detect_arch, flax_to_torch, torch_to_flax

__all__ = [
    "FAMILIES",
    "CheckpointMismatchError",
    "CosFaceHead",
    "Family",
    "IBasicBlock",
    "IRESNET_STAGES",
    "IResNet",
    "MobileFaceNet",
    "ModelBundle",
    "PReLU",
    "abstract_variables",
    "build_model",
    "canonical_name",
    "convert_torch_checkpoint",
    "cosine_logits",
    "count_elements",
    "detect_arch",
    "export_torch_checkpoint",
    "family_of",
    "fixed_parameter_shapes",
    "flax_to_torch",
    "init_variables",
    "iresnet",
    "load_pretrained",
    "margin_logits",
    "margin_loss",
    "module_order",
    "save_torch_backbone",
    "torch_state_dict",
    "torch_to_flax",
]
