"""Test set-up shared by every test file.

Four fake CPU devices are made before JAX starts, so sharding tests can run on one CPU; tests that
do not ask for several devices are unaffected (arrays live on device 0 unless sharded).

Compiled programs go to a persistent compilation cache in a temporary folder of this session:
many tests build the same tiny models and training steps (in this process and in the CLI
subprocesses, which inherit the environment), and each is compiled once per session.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jit_cache = tempfile.mkdtemp(prefix="jaxforget-tests-jit-")
    atexit.register(shutil.rmtree, _jit_cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_jit_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> pathlib.Path:
    """Path under ../shared, or skip the test with a reason saying what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's shared data beside the checkout); not present here")
    return p


@pytest.fixture(scope="session")
def shared():
    return shared_path
