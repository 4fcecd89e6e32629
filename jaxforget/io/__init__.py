"""File formats, with no model knowledge: the restricted unpickler, PyTorch checkpoint files as
numpy state dicts, and the orbax variables checkpoint."""

from jaxforget.io.checkpoint import is_variables_checkpoint, load_variables, save_variables
from jaxforget.io.safe_pickle import UnsafePickleError, restricted_load
from jaxforget.io.torch_format import (
    CheckpointFormatError,
    extract_state_dict,
    load_torch_state_dict,
    read_torch_checkpoint,
    save_torch_state_dict,
)

__all__ = [
    "CheckpointFormatError",
    "UnsafePickleError",
    "extract_state_dict",
    "is_variables_checkpoint",
    "load_torch_state_dict",
    "load_variables",
    "read_torch_checkpoint",
    "restricted_load",
    "save_torch_state_dict",
    "save_variables",
]
