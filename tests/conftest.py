"""Test set-up shared by every test file.

Four fake CPU devices are made before JAX starts, so sharding tests can run on one CPU; tests that
do not ask for several devices are unaffected (arrays live on device 0 unless sharded).
"""

import os
import pathlib

import pytest

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> pathlib.Path:
    """Path under ../shared, or skip the test with a reason saying what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's shared data beside the checkout); not present here")
    return p


@pytest.fixture
def shared():
    return shared_path
