"""ONNX model files as plain records, read safely; a small graph writer; running one with onnxruntime.

:func:`read_onnx` parses a ``.onnx`` file into an :class:`OnnxGraph`: its nodes (op type, name,
input and output tensor names, attributes as Python values), its constant tensors as numpy arrays
(initializers and the outputs of ``Constant`` nodes, which are taken out of the node list), and its
real inputs and outputs. Anything that is not a well-formed ONNX model -- a truncated or
bit-flipped file, another format, a graph the ONNX checker refuses, a tensor whose data does not
match its shape, external data that would be read from outside the model's folder -- ends with
:class:`OnnxFormatError` naming the file. :class:`GraphWriter` builds a graph from numpy constants
and nodes, :func:`save_onnx` checks and writes it atomically, :func:`run_onnx` runs a model on the
CPU with onnxruntime.

Nothing here knows a model: mapping a face backbone's graph to Flax variables is
:mod:`jaxforget.models.onnx_layout`'s job. Needs the optional packages ``onnx`` (reading, writing)
and ``onnxruntime`` (running): ``pip install 'jaxforget[onnx]'``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxforget.workdir import write_atomic

#: Opset of the graphs :class:`GraphWriter` makes by default (arcface_torch exports opset 11).
DEFAULT_OPSET = 11


class OnnxFormatError(ValueError):
    """The file is not an ONNX model this reader can use (the message names the file)."""


class OnnxUnavailableError(ImportError, ValueError):
    """The optional ``onnx`` / ``onnxruntime`` package is not installed (a ValueError too, so the
    command line reports it in one line like any other bad ``model.init``)."""


def _import(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise OnnxUnavailableError(
            f"ONNX files need the optional package {module!r} ({e}); install it with "
            "pip install 'jaxforget[onnx]'"
        ) from None


@dataclasses.dataclass(frozen=True)
class OnnxNode:
    """One node: ``op_type``, ``name``, tensor names in and out ('' = an omitted optional input),
    and attributes as Python values (ints, floats, bytes, lists of them, numpy arrays)."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, Any]
    domain: str = ""


@dataclasses.dataclass(frozen=True)
class OnnxValue:
    """A graph input or output: name, numpy dtype name and shape (an int, or a str/None for a
    symbolic or unknown dimension)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclasses.dataclass
class OnnxGraph:
    """A parsed ONNX model. ``nodes`` are in the file's (topological) order without the
    ``Constant`` nodes, whose values are in ``constants`` with the initializers."""

    path: str
    nodes: list[OnnxNode]
    constants: dict[str, np.ndarray]
    inputs: list[OnnxValue]
    outputs: list[OnnxValue]
    opset: int
    producer: str


def _fail(path: Any, what: str) -> OnnxFormatError:
    return OnnxFormatError(f"{path}: {what}")


def _tensor_array(onnx: Any, tensor: Any, path: Any) -> np.ndarray:
    """A TensorProto as a numpy array, its data checked against its declared shape first."""
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise _fail(path, f"tensor {tensor.name!r} has a negative dimension {dims} (corrupt file)")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:  # an unknown data_type code: onnx raises KeyError / ValueError / TypeError
        raise _fail(path, f"tensor {tensor.name!r} has unknown data type {tensor.data_type}") from None
    count = math.prod(dims)
    if tensor.HasField("raw_data") and len(tensor.raw_data) != count * dtype.itemsize:
        raise _fail(path, f"tensor {tensor.name!r} of shape {dims} holds {len(tensor.raw_data)} bytes, "
                          f"not {count * dtype.itemsize} (truncated or corrupt file)")
    try:
        return np.array(onnx.numpy_helper.to_array(tensor))
    except Exception as e:  # onnx raises ValueError / TypeError / AssertionError on bad data
        raise _fail(path, f"tensor {tensor.name!r} of shape {dims} cannot be read ({e})") from None


def _all_tensors(graph: Any, path: Any, depth: int = 0) -> Iterable[Any]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    if depth > 32:
        raise _fail(path, "has subgraphs nested more than 32 deep")
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_tensors(sub, path, depth + 1)


def _load_external_data(onnx: Any, model: Any, path: pathlib.Path) -> None:
    """Reads tensors stored beside the model, refusing any location outside its folder."""
    from onnx import external_data_helper

    base = path.parent.resolve()
    for tensor in _all_tensors(model.graph, path):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or pathlib.PurePath(location).is_absolute() or base not in target.parents:
            raise _fail(path, f"tensor {tensor.name!r} names external data {location!r} outside the "
                              "model's folder; refused")
        if not target.is_file():
            raise _fail(path, f"tensor {tensor.name!r} needs external data {location!r}, which is missing")
        try:
            offset, length = int(info.get("offset", 0) or 0), int(info.get("length", -1) or -1)
        except ValueError:
            raise _fail(path, f"tensor {tensor.name!r} has a bad external data offset/length") from None
        if offset < 0 or (length >= 0 and offset + length > target.stat().st_size):
            raise _fail(path, f"tensor {tensor.name!r} reads past the end of {location!r}")
        try:
            external_data_helper.load_external_data_for_tensor(tensor, str(base))
        except Exception as e:
            raise _fail(path, f"external data of tensor {tensor.name!r} cannot be read ({e})") from None
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _attribute(onnx: Any, attr: Any, path: Any) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return _tensor_array(onnx, value, path)
    if isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
        return [_tensor_array(onnx, t, path) for t in value]
    if isinstance(value, (onnx.GraphProto, onnx.TypeProto)) or (
            isinstance(value, list) and value and not isinstance(value[0], (int, float, bytes))):
        return f"<{type(value).__name__}>"  # subgraphs and types: kept opaque
    return value


def _value(onnx: Any, info: Any) -> OnnxValue:
    tensor_type = info.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except Exception:
        dtype = f"onnx-type-{tensor_type.elem_type}"
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                  for d in tensor_type.shape.dim)
    return OnnxValue(info.name, dtype, shape)


def read_onnx(path: str | os.PathLike) -> OnnxGraph:
    """Parses and checks an ONNX model file; see the module docstring for what is refused."""
    onnx = _import("onnx")
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such ONNX file") from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError, or RuntimeWarning-like errors of its backends
        raise _fail(path, f"is not an ONNX model (protobuf parse failed: {e}); truncated or another "
                          "format?") from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise _fail(path, "is not an ONNX model (no graph with nodes and outputs); truncated or another format?")
    _load_external_data(onnx, model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and the C++ checker's own errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(path, f"is not a valid ONNX model ({first})") from None
    graph = model.graph
    constants = {t.name: _tensor_array(onnx, t, path) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attributes = {a.name: _attribute(onnx, a, path) for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = attributes.get("value")
            if value is None:
                key = next((k for k in ("value_float", "value_floats", "value_int", "value_ints")
                            if k in attributes), None)
                if key is None:
                    raise _fail(path, f"Constant node {node.name!r} has no value this reader understands")
                value = np.asarray(attributes[key], np.float32 if "float" in key else np.int64)
            constants[node.output[0]] = np.asarray(value)
            continue
        nodes.append(OnnxNode(node.op_type, node.name, tuple(node.input), tuple(node.output), attributes,
                              node.domain))
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxGraph(
        path=str(path),
        nodes=nodes,
        constants=constants,
        inputs=[_value(onnx, i) for i in graph.input if i.name not in constants],
        outputs=[_value(onnx, o) for o in graph.output],
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
    )


class GraphWriter:
    """Builds an ONNX graph: numpy constants become initializers, nodes are added in order.

    ``constant(name, array)`` and ``node(op, inputs, name=..., **attributes)`` return the tensor
    name to feed to later nodes; :meth:`model` makes the ``ModelProto``.
    """

    def __init__(self, name: str):
        self.name = name
        self.initializers: list[Any] = []
        self.nodes: list[Any] = []
        self._onnx = _import("onnx")
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        name = self._unique(name)
        self.initializers.append(self._onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        """Adds a node with one output (named after the node) and returns the output's name."""
        name = self._unique(name)
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name

    def model(
        self,
        inputs: Iterable[tuple[str, Sequence[int | str]]],
        outputs: Iterable[tuple[str, Sequence[int | str]]],
        opset: int = DEFAULT_OPSET,
        producer: str = "jaxforget",
    ) -> Any:
        """The ``ModelProto``; ``inputs`` / ``outputs`` are ``(tensor name, shape)`` of float32
        tensors (a str dimension is symbolic, e.g. a dynamic batch)."""
        helper = self._onnx.helper
        fp32 = self._onnx.TensorProto.FLOAT
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info(n, fp32, list(s)) for n, s in inputs],
            [helper.make_tensor_value_info(n, fp32, list(s)) for n, s in outputs],
            initializer=self.initializers,
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


def save_onnx(model: Any, path: str | os.PathLike) -> pathlib.Path:
    """Checks ``model`` (a ``ModelProto``) and writes it to ``path`` atomically; returns the path."""
    onnx = _import("onnx")
    onnx.checker.check_model(model)
    return write_atomic(path, model.SerializeToString())


def onnx_session(model: str | os.PathLike | bytes | Any, optimize: bool = True, *, threads: int | None = None,
                 gpu: bool = False, quiet: bool = False) -> Any:
    """An onnxruntime session of a model (a path, serialised bytes or a ``ModelProto``), to run it
    many times: on the CPU, or on CUDA first when ``gpu`` and onnxruntime-gpu provides it.
    ``optimize`` as in :func:`run_onnx`; ``threads`` fixes the intra-op threads (default:
    onnxruntime's, one per core); ``quiet`` keeps onnxruntime's per-call warnings (e.g. a zoo file
    declaring an output batch of 1) off the log."""
    ort = _import("onnxruntime")
    if not isinstance(model, (bytes, str, os.PathLike)):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)


def run_onnx(model: str | os.PathLike | bytes | Any, inputs: Mapping[str, np.ndarray] | np.ndarray,
             optimize: bool = True, batch_size: int | None = None) -> list[np.ndarray]:
    """Runs a model (a path, serialised bytes or a ``ModelProto``) with onnxruntime on the CPU.

    ``inputs`` maps input names to arrays, or is one array for a model with one input. Returns the
    outputs in the graph's order. ``optimize=False`` turns off onnxruntime's graph rewrites (such
    as folding BatchNorms into convolutions), to run the graph's own arithmetic. ``batch_size``
    runs the inputs' leading axis in chunks of that size (1 for a graph exported with its batch
    fixed at 1) and concatenates the outputs.
    """
    session = onnx_session(model, optimize)
    if not isinstance(inputs, Mapping):
        inputs = {session.get_inputs()[0].name: inputs}
    feeds = {k: np.asarray(v) for k, v in inputs.items()}
    n = len(next(iter(feeds.values())))
    step = batch_size or max(n, 1)
    runs = [session.run(None, {k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, max(n, 1), step)]
    return [np.concatenate(outs) for outs in zip(*runs)]
