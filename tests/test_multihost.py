"""Multi-host data parallelism: two processes x two CPU devices equal one process x four devices.

The two processes meet through ``jax.distributed.initialize`` (``config.distributed``) on
localhost, exactly as hosts of a cluster would; each builds the same global batch and places its
own devices' rows of it. The whole tiny runner (base-model pretraining, unlearning, evaluation)
runs in both set-ups; the unlearned models and every metric must agree.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxforget import experiment
from jaxforget.io import checkpoint

from runner_fixtures import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
EVALS = ("forget_base", "retain_search")  # the protocols compared below

DRIVER = f"""
import pathlib, sys
# This checkout's code, not another installed copy of the package (a script's sys.path[0] is its
# own folder, not the working directory).
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
from runner_fixtures import tiny_config
from jaxforget import experiment
pid, port, workdir = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
c = tiny_config()
c.cache_dir = str(workdir / "cache")
c.method.steps = {STEPS}
c.evals = {EVALS!r}
c.eval.flip = False
c.distributed.coordinator_address = f"localhost:{{port}}"
c.distributed.num_processes = 2
c.distributed.process_id = pid
experiment.run(c, workdir / "run")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    assert jax.device_count() == 4, "conftest should provide 4 fake CPU devices"
    c = tiny_config()
    c.cache_dir = str(tmp_path / "one" / "cache")
    c.method.steps = STEPS
    c.evals = EVALS
    c.eval.flip = False
    experiment.run(c, tmp_path / "one" / "run")

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(driver), str(pid), port, str(tmp_path / "two")],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for pid in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    one, _ = checkpoint.load_variables(tmp_path / "one" / "run" / "unlearned_model")
    two, _ = checkpoint.load_variables(tmp_path / "two" / "run" / "unlearned_model")
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(one)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(two)])
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print(f"2 processes x 2 devices vs 1 x 4: relative parameter difference {rel:.2e}")
    assert rel <= 1e-5
    r1 = json.loads((tmp_path / "one" / "run" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "run" / "results.json").read_text())
    for state in ("original", "unlearned"):
        for proto in EVALS:
            assert r2[state][proto]["mAP"] == pytest.approx(r1[state][proto]["mAP"], abs=1e-6)
    # One writer: process 1 logged no metrics of its own (the file holds each step once).
    steps = [json.loads(s)["step"] for s in
             (tmp_path / "two" / "run" / "metrics_unlearn.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
