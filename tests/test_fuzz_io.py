"""Bad input for the readers of model and run files: PyTorch ``.pth`` / ``.ckpt``, orbax variables
directories, ONNX models (the file, and a backbone's graph as ``model.init`` reads it) and a
run's ``config.json``.
The property, the bad files and the example counts are ``tests/fuzz_fixtures.py``'s; the
regression test of each fix found here lives in the reader's own test file.
"""

from __future__ import annotations

import collections
import io
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxforget import workdir as wd
from jaxforget.errors import UserError
from jaxforget.io import checkpoint, torch_format
from jaxforget.io.safe_pickle import UnsafePickleError
from tests.fuzz_fixtures import (
    HOSTILE_INTS,
    Call,
    Global,
    PersistentId,
    Seeds,
    check_reader,
    contains_payload,
    fresh_marker,
    fuzz_settings,
    json_mutated,
    mutated,
    pickle_trees,
    to_pickle,
)
from tests.runner_fixtures import tiny_config

TORCH_ERRORS = (torch_format.CheckpointFormatError, UnsafePickleError)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# PyTorch checkpoints


@pytest.fixture(scope="module")
def torch_seeds(work):
    torch = pytest.importorskip("torch")
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = collections.OrderedDict(w=base.t(), s=base[1:, 2:], b=torch.tensor(7), h=torch.ones(5).half())
    seeds = []
    for legacy in (False, True):
        path = work / f"seed_{legacy}.pth"
        torch.save({"epoch": 3, "state_dict": sd}, path, _use_new_zipfile_serialization=not legacy)
        seeds.append(path.read_bytes())
    return Seeds(seeds)


@fuzz_settings(150)
@given(data=st.data())
def test_torch_checkpoint_mutated(work, torch_seeds, data):
    path = work / "fuzzed.pth"
    path.write_bytes(data.draw(mutated(data.draw(st.sampled_from(torch_seeds)))))
    check_reader(lambda: torch_format.load_torch_state_dict(path), (str(path),), TORCH_ERRORS)


TORCH_GLOBALS = tuple(torch_format._SAFE_GLOBALS)
_STORAGE_PID = st.tuples(
    st.just("storage"),
    st.sampled_from([Global("torch", "FloatStorage"), Global("torch", "LongStorage"), "FloatStorage"]),
    st.sampled_from(["0", "1", "9"]),
    st.just("cpu"),
    st.sampled_from([0, 1, 12, 2**40, -3]),
).map(PersistentId)
_TENSOR = st.tuples(
    _STORAGE_PID,
    st.sampled_from([0, 3, 11, 12, 2**62]),
    st.lists(st.sampled_from([0, 1, 3, 4, 2**20, 2**40, -1]), max_size=3).map(tuple),
    st.lists(st.sampled_from([0, 1, 4, 2**62, -1]), max_size=3).map(tuple),
).map(lambda a: Call(Global("torch._utils", "_rebuild_tensor_v2"), a + (False, collections.OrderedDict())))


def _torch_file(tree, fmt: str, marker) -> bytes:
    body = to_pickle(tree, marker)
    if fmt == "legacy":  # magic, protocol, sys_info, the object, the storage keys
        head = b"".join(pickle.dumps(v, protocol=2) for v in (torch_format._LEGACY_MAGIC, 1001, {"little_endian": True}))
        return head + body + pickle.dumps(["0"], protocol=2) + (12).to_bytes(8, "little") + bytes(48)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(48))
        zf.writestr("archive/data/1", bytes(5))
    return buf.getvalue()


@fuzz_settings(150)
@given(
    tree=st.one_of(pickle_trees(TORCH_GLOBALS), st.dictionaries(st.text(max_size=4), _TENSOR, min_size=1, max_size=3)),
    fmt=st.sampled_from(["zip", "legacy"]),
)
def test_torch_checkpoint_hostile_pickles(work, tree, fmt):
    """Calls to the allowed globals with wrong or absurd arguments (tensor geometry, storage ids,
    sizes), refused globals and code-running payloads anywhere in the pickle."""
    marker = fresh_marker(work)
    path = work / f"hostile_{fmt}.pth"
    path.write_bytes(_torch_file(tree, fmt, marker))
    _, error = check_reader(lambda: torch_format.read_torch_checkpoint(path), (str(path),), TORCH_ERRORS)
    assert not marker.exists(), "the checkpoint's code ran"
    assert error is not None or not contains_payload(tree)


# ------------------------------------------------------------------------------------------------
# Orbax variables checkpoints


@pytest.fixture(scope="module")
def orbax_seed(work):
    variables = {"params": {"conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}},
                 "batch_stats": {"bn": {"mean": np.ones(4, np.float32)}}}
    seed = checkpoint.save_variables(work / "seed_ckpt", variables, {"model": {"name": "iresnet18"}})
    return seed, Seeds(sorted(str(p.relative_to(seed)) for p in seed.rglob("*") if p.is_file()))


@fuzz_settings(40)
@given(data=st.data())
def test_variables_checkpoint_corrupted(work, orbax_seed, data):
    """One file of the directory truncated, flipped, overwritten, replaced by junk or removed."""
    seed, files = orbax_seed
    path = work / "fuzzed_ckpt"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(seed, path)
    target = path / data.draw(st.sampled_from(files))
    if data.draw(st.integers(0, 9)) == 0:
        target.unlink()
    else:
        target.write_bytes(data.draw(mutated(target.read_bytes())))
    for read in (checkpoint.load_metadata, checkpoint.load_variables):
        _, error = check_reader(lambda: read(path), (str(path),), (torch_format.CheckpointFormatError, FileNotFoundError))
        assert not isinstance(error, FileNotFoundError) or "is not a variables checkpoint" in str(error)


# ------------------------------------------------------------------------------------------------
# ONNX models


@pytest.fixture(scope="module")
def onnx_seed():
    onnx = pytest.importorskip("onnx")
    from jaxforget.io.onnx_format import GraphWriter

    g = GraphWriter("fuzz")
    w = g.constant("w", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    y = g.node("Conv", ["x", w], "conv", pads=[1, 1, 1, 1])
    g.nodes.append(onnx.helper.make_node("Constant", [], ["c"], value_floats=[0.5, 1.5]))
    y = g.node("Mul", [g.node("Flatten", [y], "flat"), g.constant("s", np.float32(2.0))], "out")
    model = g.model([("x", ["batch", 3, 4, 4])], [(y, ["batch", 50])])
    model.graph.initializer.append(onnx.helper.make_tensor("listed", onnx.TensorProto.INT64, [3], [1, 2, 3]))
    return onnx, Seeds([model.SerializeToString()])


def _hostile_model(onnx, seed: bytes, edit: str, value):
    model = onnx.ModelProto()
    model.ParseFromString(seed)
    tensor = model.graph.initializer[0]
    if edit == "dims":
        tensor.dims[:] = [value % 2**63, 3] if value >= 0 else [value, 3]
    elif edit == "data_type":
        tensor.data_type = value % 2**31
    elif edit == "raw_data":
        tensor.raw_data = tensor.raw_data[: value % (len(tensor.raw_data) + 1)]
    elif edit == "listed_dims":  # a tensor held as int64_data, its shape a lie
        model.graph.initializer[-1].dims[:] = [value % 2**40]
    elif edit == "external":
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entries = {"location": ["../../etc/passwd", "/etc/passwd", "w.bin", ""][value % 4],
                   "offset": str(value), "length": str(2**62)}
        for k, v in entries.items():
            tensor.external_data.add(key=k, value=v)
        tensor.ClearField("raw_data")
    elif edit == "subgraphs":  # If nodes nested deep (protobuf itself refuses ~30 levels and more)
        leaf = inner = onnx.helper.make_graph([], "leaf", [], [])
        for _ in range(value % 25):
            node = onnx.helper.make_node("If", ["cond"], ["o"], then_branch=inner, else_branch=leaf)
            inner = onnx.helper.make_graph([node], "g", [], [])
        model.graph.node.append(onnx.helper.make_node("If", ["cond"], ["o2"], then_branch=inner, else_branch=leaf))
    return model.SerializeToString()


def _check_onnx(path):
    from jaxforget.io.onnx_format import OnnxFormatError, read_onnx

    check_reader(lambda: read_onnx(path), (str(path),), (OnnxFormatError,))


@fuzz_settings(150)
@given(data=st.data())
def test_onnx_mutated(work, onnx_seed, data):
    _, seeds = onnx_seed
    path = work / "fuzzed.onnx"
    path.write_bytes(data.draw(mutated(seeds[0])))
    _check_onnx(path)


@fuzz_settings(60)
@given(edit=st.sampled_from(["dims", "data_type", "raw_data", "listed_dims", "external", "subgraphs"]),
       value=st.sampled_from(HOSTILE_INTS) | st.integers(-5, 100))
def test_onnx_hostile_fields(work, onnx_seed, edit, value):
    """Absurd shapes and data types, truncated tensor data, external data outside the folder or
    past its file's end, subgraphs nested up to 24 deep."""
    onnx, seeds = onnx_seed
    (work / "w.bin").write_bytes(bytes(96))
    path = work / "hostile.onnx"
    path.write_bytes(_hostile_model(onnx, seeds[0], edit, value))
    _check_onnx(path)


@pytest.fixture(scope="module")
def onnx_backbone(work):
    """A tiny IResNet-18 exported to ONNX the way the project exports (every variable 0.5: the
    layout, not the values, is under test)."""
    onnx = pytest.importorskip("onnx")
    import jax

    from jaxforget.models import onnx_export, registry

    bundle = registry.build_model({"name": "iresnet18", "width_mult": 0.125, "input_size": (16, 16), "embedding_size": 8})
    variables = jax.tree_util.tree_map(lambda s: np.full(s.shape, 0.5, np.float32), registry.abstract_variables(bundle))
    return onnx, Seeds([onnx_export.onnx_model(bundle, variables).SerializeToString()])


_ONNX_OPS = ("Conv", "PRelu", "Relu", "Add", "BatchNormalization", "Gemm", "Flatten", "Identity", "Mul", "Sub", "If", "Nope")


def _edited_backbone(onnx, seed: bytes, edit: str, k: int, value):
    """One structural edit of the exported graph: a node dropped, renamed, rewired or given odd
    attributes; an initializer reshaped or filled with non-finite values; the input resized."""
    model = onnx.ModelProto()
    model.ParseFromString(seed)
    nodes, inits = model.graph.node, model.graph.initializer
    node, init = nodes[k % len(nodes)], inits[k % len(inits)]
    if edit == "drop_node":
        del nodes[k % len(nodes)]
    elif edit == "op_type":
        node.op_type = _ONNX_OPS[value % len(_ONNX_OPS)]
    elif edit == "rewire":
        node.input[value % max(len(node.input), 1)] = [t.name for t in inits][value % len(inits)] if value % 3 else "missing"
    elif edit == "attribute":
        del node.attribute[:]
        name = ("strides", "pads", "group", "kernel_shape", "dilations", "axis", "alpha")[value % 7]
        node.attribute.append(onnx.helper.make_attribute(name, value if name in ("group", "axis") else [value] * 2))
    elif edit == "reshape":
        array = onnx.numpy_helper.to_array(init)
        shapes = [array.reshape(-1), array.reshape(-1, 1), array.reshape(1, *array.shape), array.T]
        init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(shapes[value % 4]), init.name))
    elif edit == "values":
        array = onnx.numpy_helper.to_array(init).copy()
        array.flat[value % array.size] = [np.nan, np.inf, -np.inf, 3e38, 0.0][value % 5]
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    elif edit == "input":  # see test_onnx_backbone_absurd_input_size for 2**40
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2 + value % 2].dim_value = [0, 1, 7, 2**20, 2**40][k % 5]
    return model.SerializeToString()


@fuzz_settings(8)
@given(edit=st.sampled_from(["drop_node", "op_type", "rewire", "attribute", "reshape", "values", "input"]),
       k=st.integers(0, 200).filter(lambda k: k % 5 != 4), value=st.integers(0, 50) | st.sampled_from([2**31, 2**40]))
def test_onnx_backbone_graph_edited(work, onnx_backbone, edit, k, value):
    """An exported backbone with one structural edit reads as a model or ends with the layout's
    own error naming the file (``models.onnx_layout``, what ``model.init=<.onnx>`` reads)."""
    from jaxforget.io.onnx_format import OnnxFormatError
    from jaxforget.models import onnx_layout
    from jaxforget.models.torch_layout import CheckpointMismatchError

    onnx, seeds = onnx_backbone
    path = work / "edited.onnx"
    path.write_bytes(_edited_backbone(onnx, seeds[0], edit, k, value))
    check_reader(lambda: onnx_layout.onnx_state_dict(path), (str(path),), (OnnxFormatError, CheckpointMismatchError))


def test_onnx_backbone_absurd_input_size(work, onnx_backbone):
    """An input declared with 2**40 rows is refused before a template of that size is allocated
    (it was a MemoryError)."""
    from jaxforget.io.onnx_format import OnnxFormatError
    from jaxforget.models import onnx_layout
    from jaxforget.models.torch_layout import CheckpointMismatchError

    onnx, seeds = onnx_backbone
    path = work / "tall.onnx"
    path.write_bytes(_edited_backbone(onnx, seeds[0], "input", 4, 0))
    check_reader(lambda: onnx_layout.onnx_state_dict(path), (str(path),), (OnnxFormatError, CheckpointMismatchError))


# ------------------------------------------------------------------------------------------------
# A run's config.json


@pytest.fixture(scope="module")
def run_config():
    return Seeds([tiny_config()])


@fuzz_settings(100)
@given(data=st.data())
def test_config_json_mutated(work, run_config, data):
    """Read back as a run's settings, or compared with the settings of a new run on the same
    workdir (that refusal names the workdir)."""
    cfg = run_config[0]
    run = work / "run"
    run.mkdir(exist_ok=True)
    path = run / "config.json"
    path.write_bytes(data.draw(json_mutated(wd.config_as_dict(cfg))))
    check_reader(lambda: wd.read_config(run), (str(path),), (UserError,))
    check_reader(lambda: wd.check_workdir_config(cfg, run), (str(run),), (UserError,))
