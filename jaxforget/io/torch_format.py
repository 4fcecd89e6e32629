"""PyTorch checkpoint files (``.pth``/``.pt``/``.ckpt``) as numpy state dicts, read without PyTorch.

Reading (:func:`read_torch_checkpoint`) parses both of PyTorch's file formats (the zip format of
``torch.save`` since 1.6, and the legacy pre-1.6 stream of pickles) through
:func:`jaxforget.io.safe_pickle.restricted_load` with an allow-list that only knows tensors,
storages and ordered dicts: any other global in the pickle (the way a malicious pickle runs code)
is refused with :class:`~jaxforget.io.safe_pickle.UnsafePickleError` before anything is called.
:func:`extract_state_dict` finds the state_dict inside a training checkpoint;
:func:`save_torch_state_dict` writes one with ``torch.save`` (needs PyTorch).

Nothing here knows a model: the names and layouts of the Flax variables are
:mod:`jaxforget.models.torch_layout`'s concern.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pathlib
import zipfile
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from jaxforget.io.safe_pickle import UnsafePickleError, restricted_load

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "net_state_dict", "model_state_dict", "model", "backbone", "net", "module")
_MAX_LISTED = 25
#: An expanded (stride-0) tensor may not grow past this many bytes when it is copied out.
_MAX_EXPANDED_BYTES = 1 << 30
#: A zip entry may not expand more than this (torch.save stores entries uncompressed).
_MAX_ZIP_RATIO = 100


class CheckpointFormatError(ValueError):
    """A checkpoint this package cannot read: not a PyTorch file this reader understands, or a
    corrupt orbax variables directory (:mod:`jaxforget.io.checkpoint`)."""


# ----------------------------------------------------------------------------------------------
# What a PyTorch pickle may reference


_STORAGE_DTYPES: dict[str, np.dtype] = {f"{name}Storage": np.dtype(t) for name, t in [
    ("Float", np.float32), ("Double", np.float64), ("Half", np.float16), ("BFloat16", ml_dtypes.bfloat16),
    ("Long", np.int64), ("Int", np.int32), ("Short", np.int16), ("Char", np.int8), ("Byte", np.uint8),
    ("Bool", np.bool_), ("Untyped", np.uint8),
]}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


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
        if self.offset < 0 or len(self.size) != len(self.stride) or min(self.size + self.stride, default=0) < 0:
            raise CheckpointFormatError(
                f"invalid tensor geometry: size {self.size}, stride {self.stride}, offset {self.offset}"
            )
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, flat.dtype)
        count = math.prod(self.size)
        if count > flat.size and count * flat.dtype.itemsize > _MAX_EXPANDED_BYTES:
            # Only overlapping strides (an expanded view) give more elements than the storage.
            raise CheckpointFormatError(
                f"tensor of size {self.size} (stride {self.stride}) expands a storage of {flat.size} elements "
                f"to {count * flat.dtype.itemsize} bytes; refused (corrupt or hostile checkpoint)"
            )
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
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused (object dtypes can run code)")
    return np.frombuffer(raw or b"", dtype=dtype, count=1)[0]


def _numpy_dtype(name: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafePickleError(f"numpy dtype {name!r} refused (object dtypes can run code)")
    return dtype


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # How protocol-2 pickles spell bytes objects.
    return text.encode(encoding)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {  # the allow-list of every torch pickle
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


def _load_pickle(file: Any, source: str, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """One pickle of a PyTorch file, through the restricted unpickler with the torch allow-list."""
    return restricted_load(
        file,
        _SAFE_GLOBALS,
        source,
        expected="a tensor, storage or container type",
        advice="Only load checkpoints from sources you trust; to convert a trusted file that holds other "
        "objects, re-save its bare state_dict with torch.save(model.state_dict(), path).",
        persistent_load=persistent_load,
    )


# ----------------------------------------------------------------------------------------------
# Reading


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


def _read_member(zf: zipfile.ZipFile, name: str, source: str) -> bytes:
    """One zip entry, refused when it would expand like a zip bomb."""
    info = zf.getinfo(name)
    if info.file_size > _MAX_ZIP_RATIO * info.compress_size + (1 << 20):
        raise CheckpointFormatError(
            f"{source}: zip entry {name!r} expands {info.compress_size} bytes to {info.file_size}; refused "
            "(a zip bomb? torch.save stores entries uncompressed)"
        )
    return zf.read(name)


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
            byteorder = _read_member(zf, prefix + "byteorder", source).decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"{source}: byteorder entry says {byteorder!r}, not 'little' or 'big'")
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
                raw = _read_member(zf, entry, source)
                data = _from_bytes(raw, dtype, little=byteorder == "little")
                storage = _Storage(dtype, data.size)
                storage.data = data
                storages[key] = storage
            return storages[key]

        return _load_pickle(io.BytesIO(_read_member(zf, pkl[0], source)), source, load_storage)


def _read_legacy(path: pathlib.Path) -> Any:
    source = str(path)
    with open(path, "rb") as f:
        try:
            magic = _load_pickle(f, source)
        except UnsafePickleError:
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
        protocol = _load_pickle(f, source)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"{source}: legacy protocol {protocol}, expected {_LEGACY_PROTOCOL}")
        sys_info = _load_pickle(f, source)
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

        result = _load_pickle(f, source, load_storage)
        keys = _load_pickle(f, source)
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
            left = os.fstat(f.fileno()).st_size - f.tell()
            if not 0 <= nbytes <= left:
                raise CheckpointFormatError(
                    f"{source}: truncated file while reading storage {key!r} ({nbytes} bytes declared, {left} left)"
                )
            storage.data = _from_bytes(f.read(nbytes), storage.dtype, little=little)
    return result


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.resolve()
    if isinstance(obj, dict):
        kind = collections.OrderedDict if isinstance(obj, collections.OrderedDict) else dict
        return kind((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def read_torch_checkpoint(path: str | pathlib.Path) -> Any:
    """Reads a PyTorch ``.pth``/``.pt``/``.ckpt`` file into Python objects with numpy arrays.

    Tensors become ``np.ndarray``; only tensors, storages, (ordered) dicts, lists, tuples and plain
    scalars are accepted. Raises :class:`~jaxforget.io.safe_pickle.UnsafePickleError` for any pickle that names another
    global (nothing from the file is executed), :class:`CheckpointFormatError` for other files.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    source = str(path)
    try:
        return _resolve(_read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path))
    except (CheckpointFormatError, UnsafePickleError) as e:
        if source in str(e):
            raise
        raise type(e)(f"{source}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a corrupt file can fail anywhere in zipfile, pickle or numpy
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointFormatError(
            f"{source}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {first})"
        ) from e


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

