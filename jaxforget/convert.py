"""PyTorch checkpoints <-> Flax variables for InsightFace IResNets and MobileFaceNet.

Reading (:func:`read_torch_checkpoint`) needs no PyTorch. It parses both of PyTorch's file formats
(the zip format of ``torch.save`` since 1.6, and the legacy pre-1.6 stream of pickles) with a
restricted unpickler that only knows tensors, storages and ordered dicts: any other global in the
pickle (the way a malicious pickle runs code) is refused with :class:`UnsafeCheckpointError` before
anything is called.

Layout mapping (:func:`torch_to_flax`, :func:`flax_to_torch`):

* Flax module ``name_N`` is PyTorch ``name.N`` (``layer1_0/downsample_0`` <-> ``layer1.0.downsample.0``).
* conv ``kernel`` HWIO <-> ``weight`` OIHW; dense ``kernel`` (in, out) <-> ``weight`` (out, in);
  BatchNorm ``scale``/``bias`` <-> ``weight``/``bias``, ``mean``/``var`` <-> ``running_mean``/
  ``running_var``; PReLU ``slope`` <-> ``weight``.
* IResNet ``fc``: PyTorch flattens (C, H, W), the Flax model flattens (H, W, C); the input axis of
  the kernel is permuted accordingly.
* ``num_batches_tracked`` is dropped on import (flax BatchNorm uses a fixed momentum) and written as
  0 on export; IResNet's fixed ``features.weight`` must be all ones on import and is written as ones.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pathlib
import pickle
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from jaxforget.models.iresnet import IRESNET_STAGES, STAGE_WIDTHS


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "net_state_dict", "model_state_dict", "model", "backbone", "net", "module")
_MAX_LISTED = 25


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle references a global that could run code; nothing was executed."""


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands."""


class CheckpointMismatchError(ValueError):
    """Keys or shapes of a state_dict do not match the model (message lists every problem)."""


# ----------------------------------------------------------------------------------------------
# Safe reading


def _bfloat16() -> np.dtype:
    import ml_dtypes  # installed with jax

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "FloatStorage": lambda: np.dtype(np.float32),
    "DoubleStorage": lambda: np.dtype(np.float64),
    "HalfStorage": lambda: np.dtype(np.float16),
    "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype(np.int64),
    "IntStorage": lambda: np.dtype(np.int32),
    "ShortStorage": lambda: np.dtype(np.int16),
    "CharStorage": lambda: np.dtype(np.int8),
    "ByteStorage": lambda: np.dtype(np.uint8),
    "BoolStorage": lambda: np.dtype(np.bool_),
    "UntypedStorage": lambda: np.dtype(np.uint8),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]()


class _Storage:
    """A flat typed buffer; ``data`` is filled when the bytes are read (legacy files: after the pickle)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.view_of: tuple[_Storage, int] | None = None  # legacy storage views: (root, offset)

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset = self.view_of
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise CheckpointFormatError("storage data missing from the checkpoint (truncated file?)")
        return self.data


@dataclasses.dataclass
class _PendingTensor:
    """A tensor whose storage bytes may not have been read yet; resolved to numpy at the end."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def resolve(self) -> np.ndarray:
        flat = self.storage.array()
        if (
            self.offset < 0
            or len(self.size) != len(self.stride)
            or any(n < 0 for n in self.size)
            or any(s < 0 for s in self.stride)
        ):
            raise CheckpointFormatError(
                f"invalid tensor geometry: size {self.size}, stride {self.stride}, offset {self.offset}"
            )
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, flat.dtype)
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if needed > flat.size:
            raise CheckpointFormatError(
                f"tensor of size {self.size} (stride {self.stride}, offset {self.offset}) reads past its "
                f"storage of {flat.size} elements (corrupt checkpoint)"
            )
        if not self.size:
            return np.array(flat[self.offset])
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor(storage: _Storage, offset: int, size: Iterable[int], stride: Iterable[int], *_: Any) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    return _PendingTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _numpy_scalar(dtype: np.dtype, raw: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError(f"numpy scalar of dtype {dtype!r} refused (object dtypes can run code)")
    return np.frombuffer(raw or b"", dtype=dtype, count=1)[0]


def _numpy_dtype(name: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"numpy dtype {name!r} refused (object dtypes can run code)")
    return dtype


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # How protocol-2 pickles spell bytes objects.
    return text.encode(encoding)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _codecs_encode,
}
_SAFE_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
_SAFE_GLOBALS[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_SAFE_GLOBALS``."""

    def __init__(self, file: Any, source: str, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refused to load: the pickle references `{module}.{name}`, which is not a "
                "tensor, storage or container type. Unpickling it could run arbitrary code, so nothing was "
                "executed. Only load checkpoints from sources you trust; to convert a trusted file that holds "
                "other objects, re-save its bare state_dict with torch.save(model.state_dict(), path)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafeCheckpointError(f"{self._source}: unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)


def _from_bytes(raw: bytes, dtype: np.dtype, little: bool) -> np.ndarray:
    """Native-order array from raw storage bytes written in little- or big-endian order."""
    data = np.frombuffer(raw, dtype=dtype)
    if little != (np.little_endian) and dtype.itemsize > 1:
        data = data.byteswap()
    return data


def _storage_type_of(value: Any, source: str) -> _StorageType:
    if not isinstance(value, _StorageType):
        raise CheckpointFormatError(f"{source}: storage type {value!r} is not a known torch storage")
    return value


def _read_zip(path: pathlib.Path) -> Any:
    source = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointFormatError(
                f"{source}: zip file without '<archive>/data.pkl'; not a PyTorch checkpoint written by torch.save"
            )
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode().strip()
        storages: dict[str, _Storage] = {}

        def load_storage(pid: Any) -> _Storage:
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointFormatError(f"{source}: unsupported persistent id {pid!r}")
            _, stype, key, _location, numel = pid[:5]
            stype = _storage_type_of(stype, source)
            key = str(key)
            if key not in storages:
                dtype = stype.dtype
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise CheckpointFormatError(f"{source}: storage entry {entry!r} is missing from the zip file")
                raw = zf.read(entry)
                data = _from_bytes(raw, dtype, little=byteorder == "little")
                storage = _Storage(dtype, data.size)
                storage.data = data
                storages[key] = storage
            return storages[key]

        with zf.open(pkl[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), source, load_storage).load()


def _read_legacy(path: pathlib.Path) -> Any:
    source = str(path)
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f, source).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any parse failure means "not this format"
            raise CheckpointFormatError(
                f"{source}: neither a PyTorch zip checkpoint nor a legacy PyTorch pickle ({e})"
            ) from e
        if magic != _LEGACY_MAGIC:
            raise CheckpointFormatError(
                f"{source}: not a PyTorch checkpoint (first pickle is {type(magic).__name__}, not torch's magic "
                "number); if it is a plain pickle of a state_dict, re-save it with torch.save"
            )
        protocol = _RestrictedUnpickler(f, source).load()
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"{source}: legacy protocol {protocol}, expected {_LEGACY_PROTOCOL}")
        sys_info = _RestrictedUnpickler(f, source).load()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        storages: dict[str, _Storage] = {}

        def load_storage(pid: Any) -> _Storage:
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointFormatError(f"{source}: unsupported persistent id {pid!r}")
            _, stype, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) > 5 else None
            stype = _storage_type_of(stype, source)
            key = str(key)
            if key not in storages:
                storages[key] = _Storage(stype.dtype, int(numel))
            if view is None:
                return storages[key]
            view_key, offset, view_size = view
            if str(view_key) not in storages:
                sub = _Storage(stype.dtype, int(view_size))
                sub.view_of = (storages[key], int(offset))
                storages[str(view_key)] = sub
            return storages[str(view_key)]

        result = _RestrictedUnpickler(f, source, load_storage).load()
        keys = _RestrictedUnpickler(f, source).load()
        order = "<" if little else ">"
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise CheckpointFormatError(f"{source}: storage {key!r} listed in the file but never referenced")
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{source}: truncated file while reading storage {key!r}")
            numel = int(np.frombuffer(header, dtype=order + "i8")[0])
            if numel != storage.numel:
                raise CheckpointFormatError(
                    f"{source}: storage {key!r} holds {numel} elements on disk but {storage.numel} in the pickle"
                )
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointFormatError(f"{source}: truncated file while reading storage {key!r}")
            storage.data = _from_bytes(raw, storage.dtype, little=little)
    return result


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.resolve()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v)
        return out
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def read_torch_checkpoint(path: str | pathlib.Path) -> Any:
    """Reads a PyTorch ``.pth``/``.pt``/``.ckpt`` file into Python objects with numpy arrays.

    Tensors become ``np.ndarray``; only tensors, storages, (ordered) dicts, lists, tuples and plain
    scalars are accepted. Raises :class:`UnsafeCheckpointError` for any pickle that names another
    global (nothing from the file is executed), :class:`CheckpointFormatError` for other files.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    raw = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    return _resolve(raw)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, source: str = "<checkpoint>") -> "collections.OrderedDict[str, np.ndarray]":
    """Finds the state_dict in a loaded checkpoint and strips DataParallel's ``module.`` prefixes.

    Accepts a bare state_dict or a dict wrapping one under ``state_dict``, ``net_state_dict``,
    ``model_state_dict``, ``model``, ``backbone``, ``net`` or ``module``.
    """
    sd = None
    if _is_state_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                sd = obj[key]
                break
    if sd is None:
        top = list(obj.keys())[:_MAX_LISTED] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointFormatError(
            f"{source}: no state_dict found; expected a dict of tensors, or one under one of {_WRAPPER_KEYS}. "
            f"Top level holds: {top}"
        )
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for k, v in sd.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        if k2 in out:
            raise CheckpointFormatError(f"{source}: key {k2!r} appears both with and without the 'module.' prefix")
        out[k2] = v
    return out


def load_torch_state_dict(path: str | pathlib.Path) -> "collections.OrderedDict[str, np.ndarray]":
    """:func:`read_torch_checkpoint` followed by :func:`extract_state_dict`."""
    return extract_state_dict(read_torch_checkpoint(path), str(path))


# ----------------------------------------------------------------------------------------------
# Architecture detection


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """What a state_dict says about its model; :meth:`model_config` feeds ``build_model``."""

    name: str  # 'iresnet50', 'mobilefacenet', ...
    width_mult: float
    embedding_size: int
    input_size: tuple[int, int]
    depth: int | None = None

    @property
    def family(self) -> str:
        return "mobilefacenet" if self.name == "mobilefacenet" else "iresnet"

    def model_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width_mult": self.width_mult,
            "input_size": tuple(self.input_size),
            "embedding_size": self.embedding_size,
            "dtype": "float32",
            "dropout": 0.0,
        }


def _shape(sd: Mapping[str, Any], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointMismatchError(f"{source}: key {key!r} missing; it is needed to recognise the architecture")
    return tuple(int(s) for s in np.shape(sd[key]))


def detect_arch(
    state_dict: Mapping[str, Any],
    arch: str = "auto",
    input_size: tuple[int, int] | None = None,
    source: str = "<state_dict>",
) -> ArchInfo:
    """Recognises an InsightFace IResNet (depth from the blocks per stage) or a MobileFaceNet.

    Args:
      state_dict: key -> array (only shapes are read).
      arch: ``'auto'``, ``'iresnet'`` or ``'mobilefacenet'`` (to insist on a family).
      input_size: ``(H, W)``; needed only for a non-square IResNet (the fc input size fixes
        ``H/16 * W/16`` but not the aspect ratio).
    """
    if arch not in ("auto", "iresnet", "mobilefacenet"):
        raise ValueError(f"arch {arch!r} is not one of 'auto', 'iresnet', 'mobilefacenet'")
    is_mfn = "linear7.conv.weight" in state_dict or any(k.startswith("dw_conv1.") for k in state_dict)
    is_ires = "fc.weight" in state_dict and any(re.match(r"layer1\.0\.", k) for k in state_dict)
    if arch == "auto":
        if is_mfn == is_ires:
            raise CheckpointMismatchError(
                f"{source}: cannot tell the architecture from the keys (first keys: {list(state_dict)[:8]}); "
                "expected InsightFace IResNet keys (conv1.weight, layer1.0.*, fc.weight, features.*) or "
                "MobileFaceNet keys (conv1.conv.weight, dw_conv1.*, blocks.*, linear7.*, linear1.*)"
            )
        arch = "mobilefacenet" if is_mfn else "iresnet"

    if arch == "mobilefacenet":
        c1 = _shape(state_dict, "conv1.conv.weight", source)
        l7 = _shape(state_dict, "linear7.conv.weight", source)
        l1 = _shape(state_dict, "linear1.conv.weight", source)
        size = (16 * l7[2], 16 * l7[3])
        if input_size is not None and tuple(input_size) != size:
            raise CheckpointMismatchError(
                f"{source}: linear7.conv.weight {l7} fixes the input at {size}, not the requested {tuple(input_size)}"
            )
        return ArchInfo("mobilefacenet", c1[0] / 64.0, l1[0], size)

    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if blocks != set(range(len(blocks))):
            raise CheckpointMismatchError(f"{source}: blocks of layer{stage} are not numbered 0..n-1: {sorted(blocks)}")
        counts.append(len(blocks))
    depth = next((d for d, s in IRESNET_STAGES.items() if list(s) == counts), None)
    if depth is None:
        raise CheckpointMismatchError(
            f"{source}: blocks per stage {counts} match no IResNet depth; known: "
            + ", ".join(f"r{d} {list(s)}" for d, s in IRESNET_STAGES.items())
        )
    stem = _shape(state_dict, "conv1.weight", source)
    fc = _shape(state_dict, "fc.weight", source)
    channels = _shape(state_dict, "bn2.weight", source)[0]
    width = stem[0] / STAGE_WIDTHS[0]
    if fc[1] % channels:
        raise CheckpointMismatchError(f"{source}: fc.weight {fc} is not a multiple of bn2 channels {channels}")
    cells = fc[1] // channels
    if input_size is None:
        side = math.isqrt(cells)
        if side * side != cells:
            raise CheckpointMismatchError(
                f"{source}: fc.weight {fc} implies a final map of {cells} cells, not a square; pass the input size"
            )
        input_size = (16 * side, 16 * side)
    elif (input_size[0] // 16) * (input_size[1] // 16) != cells:
        raise CheckpointMismatchError(
            f"{source}: fc.weight {fc} implies {cells} final cells, but input_size {tuple(input_size)} gives "
            f"{(input_size[0] // 16) * (input_size[1] // 16)}"
        )
    return ArchInfo(f"iresnet{depth}", width, fc[0], (int(input_size[0]), int(input_size[1])), depth)


# ----------------------------------------------------------------------------------------------
# Layout mapping


_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "slope": "weight"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _torch_module(path: Iterable[str]) -> str:
    return ".".join(m.group(1) + "." + m.group(2) if (m := re.fullmatch(r"(.+)_(\d+)", p)) else p for p in path)


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.extend(_flat(v, prefix + (k,)))
        else:
            out.append((prefix + (k,), v))
    return out


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    names = _PARAM_NAMES if collection == "params" else _STAT_NAMES
    if path[-1] not in names:
        raise ValueError(f"no PyTorch name for flax variable {collection}/{'/'.join(path)}")
    return _torch_module(path[:-1]) + "." + names[path[-1]]


def _fc_channels(params: Mapping[str, Any], path: tuple[str, ...]) -> int | None:
    """Channels of the map flattened into an IResNet ``fc`` (from the sibling ``bn2``), else None."""
    if path != ("fc", "kernel"):
        return None
    bias = params.get("bn2", {}).get("bias")
    return None if bias is None else int(np.shape(bias)[0])


def _to_flax_layout(value: np.ndarray, leaf: str, fc_channels: int | None) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        out_f, in_f = value.shape
        if fc_channels:
            cells = in_f // fc_channels
            return value.reshape(out_f, fc_channels, cells).transpose(2, 1, 0).reshape(in_f, out_f)
        return value.T
    return value


def _to_torch_layout(value: np.ndarray, leaf: str, fc_channels: int | None) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        in_f, out_f = value.shape
        if fc_channels:
            cells = in_f // fc_channels
            return value.reshape(cells, fc_channels, out_f).transpose(2, 1, 0).reshape(out_f, in_f)
        return value.T
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _raise_problems(problems: list[str], source: str, what: str) -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise CheckpointMismatchError(
        f"{source}: {len(problems)} problem(s) {what}:\n  " + "\n  ".join(shown) + more
        + "\nCheck that the model config (name, width_mult, input_size, embedding_size) matches the checkpoint."
    )


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    fixed: Mapping[str, tuple[int, ...]] | None = None,
    source: str = "<state_dict>",
) -> dict[str, Any]:
    """Maps a PyTorch state_dict onto the Flax variables described by ``template``.

    Args:
      state_dict: PyTorch key -> numpy array (e.g. from :func:`load_torch_state_dict`).
      template: Flax variables or their shapes (``jax.eval_shape(module.init, ...)``), with
        collections ``params`` and ``batch_stats``.
      fixed: PyTorch parameters the Flax model holds as constant ones (IResNet's
        ``features.weight``); they must be present and all ones.
    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays.
    Raises:
      CheckpointMismatchError listing every missing, unexpected or mis-shaped key with both shapes.
    """
    fixed = dict(fixed or {})
    problems: list[str] = []
    used: set[str] = set()
    out: dict[str, Any] = {}
    params_template = template.get("params", {})
    for collection in ("params", "batch_stats"):
        for path, leaf in _flat(template.get(collection, {})):
            key = _torch_key(collection, path)
            want = tuple(int(s) for s in np.shape(leaf))
            flax_name = f"{collection}/{'/'.join(path)}"
            if key not in state_dict:
                problems.append(
                    f"missing key {key!r}: the model needs shape {_torch_shape(want, path[-1])} (flax {flax_name} {want})"
                )
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            fc_channels = _fc_channels(params_template, path) if collection == "params" else None
            expected_torch = _torch_shape(want, path[-1])
            if fc_channels and expected_torch[1] % fc_channels:
                fc_channels = None
            if tuple(value.shape) != expected_torch:
                problems.append(
                    f"shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, the model expects "
                    f"{expected_torch} (flax {flax_name} {want})"
                )
                continue
            node = out.setdefault(collection, {})
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = np.ascontiguousarray(_to_flax_layout(value, path[-1], fc_channels), dtype=np.float32)
    for key, shape in fixed.items():
        if key not in state_dict:
            problems.append(f"missing key {key!r}: the model needs shape {tuple(shape)} (fixed at ones)")
            continue
        used.add(key)
        value = np.asarray(state_dict[key])
        if tuple(value.shape) != tuple(shape):
            problems.append(f"shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, the model expects {tuple(shape)}")
        elif not np.all(value == 1):
            problems.append(
                f"key {key!r} must be all ones (InsightFace fixes it and never trains it); found values in "
                f"[{float(value.min())}, {float(value.max())}]"
            )
    for key, value in state_dict.items():
        if key not in used and not key.endswith("num_batches_tracked"):
            problems.append(f"unexpected key {key!r} with shape {tuple(np.shape(value))}: the model has no such variable")
    _raise_problems(problems, source, "mapping the PyTorch state_dict onto the Flax model")
    out.setdefault("params", {})
    if "batch_stats" in template:
        out.setdefault("batch_stats", {})
    return out


def flax_to_torch(
    variables: Mapping[str, Any],
    fixed: Mapping[str, tuple[int, ...]] | None = None,
    order: Iterable[tuple[str, ...]] | None = None,
) -> "collections.OrderedDict[str, np.ndarray]":
    """Writes Flax variables as a PyTorch state_dict (numpy values) in InsightFace's layout.

    BatchNorm modules get ``weight, bias, running_mean, running_var, num_batches_tracked`` (the
    last as an int64 0); ``fixed`` parameters (IResNet's ``features.weight``) are written as ones.
    ``order`` (module paths, e.g. ``registry.module_order(bundle)``) orders the keys like PyTorch's
    registration order; without it modules come in Flax's (sorted) order.
    """
    fixed = dict(fixed or {})
    variables = jax.device_get(variables)
    params = variables.get("params", {})
    stats = variables.get("batch_stats", {})
    modules: "collections.OrderedDict[tuple[str, ...], dict[str, Any]]" = collections.OrderedDict()
    for path, value in _flat(params):
        modules.setdefault(path[:-1], {})[("params", path[-1])] = value
    for path, value in _flat(stats):
        modules.setdefault(path[:-1], {})[("batch_stats", path[-1])] = value
    if order is not None:
        rank = {tuple(p): i for i, p in enumerate(order)}
        modules = collections.OrderedDict(
            sorted(modules.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        )
    sd: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for mpath, leaves in modules.items():
        prefix = _torch_module(mpath)
        is_bn = ("batch_stats", "mean") in leaves
        fixed_weight = fixed.pop(prefix + ".weight", None)
        order = (
            [("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")]
            if is_bn
            else sorted(leaves, key=lambda cl: {"kernel": 0, "slope": 0, "bias": 1}.get(cl[1], 2))
        )
        for cl in order:
            if cl == ("params", "scale") and cl not in leaves and fixed_weight is not None:
                sd[prefix + ".weight"] = np.ones(fixed_weight, np.float32)
                continue
            if cl not in leaves:
                continue
            collection, leaf = cl
            fc_channels = _fc_channels(params, mpath + (leaf,)) if collection == "params" else None
            value = np.asarray(leaves[cl], dtype=np.float32)
            sd[_torch_key(collection, mpath + (leaf,))] = np.ascontiguousarray(_to_torch_layout(value, leaf, fc_channels))
        if is_bn:
            sd[prefix + ".num_batches_tracked"] = np.array(0, dtype=np.int64)
    for key, shape in fixed.items():
        sd[key] = np.ones(shape, np.float32)
    return sd


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str | pathlib.Path) -> None:
    """Saves a numpy state_dict with ``torch.save`` (zip format), loadable by ``torch.load``.

    Needs PyTorch (``pip install 'jaxforget[convert]'``).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing a .pth file needs PyTorch; install it with `pip install 'jaxforget[convert]'`"
        ) from e
    tensors = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state_dict.items())
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)


def count_elements(tree: Any) -> int:
    """Total number of array elements in a pytree (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------------------------
# Whole-file conversions (used by tools/convert_insightface.py and registry.load_pretrained)


def convert_torch_checkpoint(
    input_path: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    arch: str = "auto",
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Converts a PyTorch IResNet/MobileFaceNet checkpoint into an orbax variables directory.

    Returns a summary: ``arch``, ``depth``, ``model`` (config), ``keys_converted``,
    ``keys_skipped`` (``num_batches_tracked`` and fixed parameters), ``param_elements``,
    ``fixed_elements``, ``stat_elements``, ``output``.
    """
    from jaxforget import checkpoint
    from jaxforget.models import registry

    source = str(input_path)
    state_dict = load_torch_state_dict(input_path)
    info = detect_arch(state_dict, arch, input_size, source=source)
    bundle = registry.build_model(info.model_config())
    fixed = bundle.fixed_parameters()
    variables = torch_to_flax(state_dict, registry.abstract_variables(bundle), fixed, source)
    written = checkpoint.save_variables(
        output_dir,
        variables,
        {"model": bundle.config(), "source": {"path": str(pathlib.Path(input_path).absolute()), "format": "pytorch"}},
    )
    skipped = [k for k in state_dict if k.endswith("num_batches_tracked") or k in fixed]
    return {
        "arch": info.family,
        "name": info.name,
        "depth": info.depth,
        "model": bundle.config(),
        "keys_in_checkpoint": len(state_dict),
        "keys_converted": len(state_dict) - len(skipped),
        "keys_skipped": len(skipped),
        "param_elements": count_elements(variables["params"]),
        "fixed_elements": sum(math.prod(s) for s in fixed.values()),
        "stat_elements": count_elements(variables.get("batch_stats", {})),
        "output": str(written),
    }


def export_torch_checkpoint(variables_dir: str | pathlib.Path, output_path: str | pathlib.Path) -> dict[str, Any]:
    """Writes an orbax variables directory as a bare PyTorch state_dict ``.pth`` (InsightFace layout)."""
    from jaxforget import checkpoint
    from jaxforget.models import registry

    variables, metadata = checkpoint.load_variables(variables_dir)
    model_cfg = metadata.get("model")
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"{variables_dir}: metadata has no 'model' config; cannot tell which layout to write")
    bundle = registry.build_model(model_cfg)
    registry._check_against(variables, bundle, str(variables_dir))
    state_dict = flax_to_torch(variables, bundle.fixed_parameters(), registry.module_order(bundle))
    save_torch_state_dict(state_dict, output_path)
    return {
        "name": bundle.name,
        "model": bundle.config(),
        "keys_written": len(state_dict),
        "param_elements": sum(v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
        "output": str(pathlib.Path(output_path).absolute()),
    }
