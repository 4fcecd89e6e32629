"""The orbax variables checkpoint: variables and JSON metadata round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

from jaxforget.io import checkpoint
from jaxforget.io.torch_format import CheckpointFormatError


def test_variables_and_metadata_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "params": {"conv1": {"kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32)},
                   "fc": {"kernel": rng.normal(size=(8, 2)).astype(np.float32), "bias": np.zeros(2, np.float32)}},
        "batch_stats": {"bn1": {"mean": rng.normal(size=4).astype(np.float32), "var": np.ones(4, np.float32)}},
        "head": np.ones((3, 2), np.float32),
    }
    meta = {"model": {"name": "iresnet18", "input_size": (32, 32)}, "count": np.int64(3), "note": "test"}
    written = checkpoint.save_variables(tmp_path / "ck", variables, meta)
    assert written == (tmp_path / "ck").absolute() and checkpoint.is_variables_checkpoint(written)
    got, got_meta = checkpoint.load_variables(tmp_path / "ck")
    assert got_meta == {"model": {"name": "iresnet18", "input_size": [32, 32]}, "count": 3, "note": "test"}
    for c in ("params", "batch_stats"):
        for m, leaves in variables[c].items():
            for k, v in leaves.items():
                assert isinstance(got[c][m][k], np.ndarray)
                np.testing.assert_array_equal(got[c][m][k], v)
    np.testing.assert_array_equal(got["head"], variables["head"])

    # Saving again replaces the directory.
    checkpoint.save_variables(tmp_path / "ck", {"params": {"w": np.zeros(1, np.float32)}}, {"model": {}})
    assert set(checkpoint.load_variables(tmp_path / "ck")[0]) == {"params"}


def test_not_a_variables_checkpoint(tmp_path):
    assert not checkpoint.is_variables_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a variables checkpoint"):
        checkpoint.load_variables(tmp_path)


def test_corrupt_directory_is_the_readers_error_naming_it(tmp_path):
    """Before (found by tests/test_fuzz_*.py): orbax's and json's own errors escaped
    (JSONDecodeError for a broken ``_METADATA``, TypeError for metadata that is a JSON list)."""
    path = tmp_path / "ck"
    checkpoint.save_variables(path, {"params": {"w": np.ones(3, np.float32)}}, {"model": {}})
    (path / "variables" / "_METADATA").write_text("{broken")
    with pytest.raises(CheckpointFormatError, match=rf"^{path}: corrupt or incomplete variables checkpoint \(JSONDecodeError"):
        checkpoint.load_variables(path)
    (path / "metadata" / "metadata").write_text("{broken")
    with pytest.raises(CheckpointFormatError, match=rf"^{path}: corrupt or incomplete variables checkpoint \(JSONDecodeError"):
        checkpoint.load_metadata(path)
    checkpoint.save_variables(path, {"params": {"w": np.ones(3, np.float32)}}, [1, 2])
    for read in (checkpoint.load_metadata, checkpoint.load_variables):
        with pytest.raises(CheckpointFormatError, match=rf"^{path}: its metadata is a list, not a JSON object"):
            read(path)
