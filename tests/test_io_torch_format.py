"""Reading PyTorch checkpoints without PyTorch: both file formats, strided and typed tensors,
state_dict extraction, and refusal of pickles that would run code."""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxforget.io import torch_format  # noqa: E402
from jaxforget.io.safe_pickle import UnsafePickleError  # noqa: E402
from jaxforget.models import load_pretrained  # noqa: E402
from jaxforget.testing.payloads import CodeRunningPayload  # noqa: E402
from tests.fuzz_fixtures import Call, Global, PersistentId, to_pickle  # noqa: E402

torch.set_num_threads(2)


@pytest.mark.parametrize("fmt", ["legacy", "zip", "legacy_header"])
def test_code_running_checkpoint_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{fmt}.pth"
    evil = collections.OrderedDict({"conv1.weight": torch.zeros(2), "bn1.bias": CodeRunningPayload(marker)})
    if fmt == "zip":
        torch.save(evil, path)  # a real torch zip whose data.pkl names posix.system
    elif fmt == "legacy":
        torch.save(evil, path, _use_new_zipfile_serialization=False)
    else:  # the payload in the very first pickle of a legacy-looking file
        path.write_bytes(pickle.dumps(CodeRunningPayload(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused to load.*system") as e:
        torch_format.read_torch_checkpoint(path)
    assert str(path) in str(e.value)
    assert "not a tensor, storage or container type" in str(e.value)
    assert "torch.save(model.state_dict(), path)" in str(e.value)
    with pytest.raises(UnsafePickleError):
        load_pretrained({"init": str(path)})
    assert not marker.exists(), "the checkpoint's code ran"


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(torch_format.CheckpointFormatError, match="junk.pth"):
        torch_format.read_torch_checkpoint(path)
    zpath = tmp_path / "other.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(torch_format.CheckpointFormatError, match="data.pkl"):
        torch_format.read_torch_checkpoint(zpath)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(100)}, good, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(torch_format.CheckpointFormatError, match="cut.pth: truncated file"):
        torch_format.read_torch_checkpoint(cut)
    with pytest.raises(FileNotFoundError, match="nothere.pth does not exist"):
        torch_format.read_torch_checkpoint(tmp_path / "nothere.pth")


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
        got = torch_format.read_torch_checkpoint(path)
        for k, v in obj.items():
            want = v.float().numpy() if k == "bf16" else v.numpy()
            np.testing.assert_array_equal(np.asarray(got[k], want.dtype), want, err_msg=f"{k} legacy={legacy}")
            assert got[k].shape == tuple(v.shape)


def test_extract_state_dict_unwraps_and_strips_module_prefix(tmp_path):
    w = np.arange(3, dtype=np.float32)
    bare = collections.OrderedDict([("module.a.weight", w), ("module.b.bias", w + 1)])
    for wrapped in (bare, {"epoch": 2, "state_dict": bare}, {"net_state_dict": bare, "optimizer": {"lr": 0.1}}):
        sd = torch_format.extract_state_dict(wrapped, "w.pth")
        assert list(sd) == ["a.weight", "b.bias"]
        np.testing.assert_array_equal(sd["b.bias"], w + 1)
    with pytest.raises(torch_format.CheckpointFormatError, match="no state_dict found"):
        torch_format.extract_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}}, "opt.pth")
    with pytest.raises(torch_format.CheckpointFormatError, match="'a.weight' appears both with and without"):
        torch_format.extract_state_dict({"a.weight": w, "module.a.weight": w}, "dup.pth")

    # Written with torch.save, read back without PyTorch, in the same order.
    path = tmp_path / "sd.pth"
    torch_format.save_torch_state_dict(collections.OrderedDict([("z", w), ("a", w * 2)]), path)
    got = torch_format.load_torch_state_dict(path)
    assert list(got) == ["z", "a"]
    np.testing.assert_array_equal(got["a"], w * 2)
    assert torch.load(path, weights_only=True)["z"].dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# Bad files (found by tests/test_fuzz_*.py): each ends with the reader's error naming the file


def _member_offset(raw: bytes, name: str) -> int:
    """Byte offset of zip member ``name``'s data in ``raw``."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        at = zf.getinfo(name).header_offset
    name_len, extra_len = struct.unpack_from("<HH", raw, at + 26)
    return at + 30 + name_len + extra_len


def _zip_checkpoint(path, data_pkl: bytes, entries: dict[str, bytes], compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        for name, data in entries.items():
            zf.writestr(f"archive/{name}", data)


def _tensor_pickle(size, stride, offset=0):
    """data.pkl of ``{'w': tensor}`` over storage '0' (12 float32), with the given geometry."""
    pid = PersistentId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 12))
    call = Call(Global("torch._utils", "_rebuild_tensor_v2"), (pid, offset, size, stride, False, collections.OrderedDict()))
    return to_pickle({"w": call}, pathlib.Path("/nonexistent"))


def test_corrupt_zip_and_truncated_legacy_files_name_the_file(tmp_path):
    """Before: zipfile's BadZipFile, pickle's UnpicklingError / EOFError escaped as they were."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(6.0)}, good)
    raw = bytearray(good.read_bytes())
    raw[_member_offset(bytes(raw), "good/data.pkl") + 3] ^= 0xFF
    crc = tmp_path / "crc.pth"
    crc.write_bytes(bytes(raw))
    with pytest.raises(torch_format.CheckpointFormatError, match=r"crc.pth: corrupt or truncated PyTorch checkpoint \(BadZipFile: Bad CRC-32"):
        torch_format.read_torch_checkpoint(crc)

    torch.save({"w": torch.arange(6.0)}, good, _use_new_zipfile_serialization=False)
    stream = io.BytesIO(good.read_bytes())
    for _ in range(3):  # magic number, protocol, sys_info; then the object pickle, cut short
        pickle.load(stream)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: stream.tell() + 10])
    with pytest.raises(torch_format.CheckpointFormatError, match=r"cut.pth: corrupt or truncated PyTorch checkpoint \((UnpicklingError|EOFError)"):
        torch_format.read_torch_checkpoint(cut)


def test_bad_tensor_geometry_and_byteorder_name_the_file(tmp_path):
    """Before: the geometry error did not name the file; a non-ASCII byteorder entry escaped as
    UnicodeDecodeError and any other text was read as big-endian."""
    path = tmp_path / "geometry.pth"
    _zip_checkpoint(path, _tensor_pickle((4,), (1,), offset=64), {"byteorder": b"little", "data/0": bytes(48)})
    with pytest.raises(torch_format.CheckpointFormatError, match=r"geometry.pth: tensor of size \(4,\).*reads past its storage"):
        torch_format.read_torch_checkpoint(path)
    for junk in (b"\xff\xfe", b"middle"):
        path = tmp_path / "byteorder.pth"
        _zip_checkpoint(path, _tensor_pickle((4,), (1,)), {"byteorder": junk, "data/0": bytes(48)})
        with pytest.raises(torch_format.CheckpointFormatError, match=r"byteorder.pth: "):
            torch_format.read_torch_checkpoint(path)


def test_absurd_sizes_are_refused_before_allocating(tmp_path):
    """Before: a stride-0 tensor of 4 GiB over a 48-byte storage was copied out in full, and a
    zip entry of 20 MB of zeros deflated to ~20 kB was decompressed whole."""
    path = tmp_path / "expand.pth"
    _zip_checkpoint(path, _tensor_pickle((2**20, 2**10), (0, 0)), {"byteorder": b"little", "data/0": bytes(48)})
    with pytest.raises(torch_format.CheckpointFormatError, match=r"expand.pth: tensor of size \(1048576, 1024\).*expands a storage of 12"):
        torch_format.read_torch_checkpoint(path)
    # A small expanded view (what torch.save writes for tensor.expand) still reads as torch reads it.
    small = tmp_path / "small_expand.pth"
    torch.save({"e": torch.arange(4.0).expand(3, 4)}, small)
    np.testing.assert_array_equal(torch_format.read_torch_checkpoint(small)["e"], np.tile(np.arange(4.0), (3, 1)))

    bomb = tmp_path / "bomb.pth"
    _zip_checkpoint(bomb, _tensor_pickle((4,), (1,)), {"byteorder": b"little", "data/0": bytes(20 << 20)},
                    compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(torch_format.CheckpointFormatError, match=r"bomb.pth: zip entry 'archive/data/0' expands \d+ bytes to 20971520"):
        torch_format.read_torch_checkpoint(bomb)
