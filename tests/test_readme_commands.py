"""The README's two commands are what CI runs (``.ci/run`` reads both from the README), and the
``dev`` extra they install holds every extra the tests use, so that whoever follows the README
runs every test CI runs."""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _indented_commands(prefix: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [ln[4:] for ln in text.splitlines() if ln.startswith("    " + prefix)]


def _extras() -> dict[str, str]:
    """``name -> requirement list`` of pyproject.toml's optional dependencies (text as written)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^([A-Za-z0-9_-]+)\s*=\s*(\[.*\])\s*$", section, flags=re.M))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run .ci/run --print")
def test_ci_runs_the_readmes_setup_and_test_commands():
    install, tests = _indented_commands("python3 -m pip install ")[0], _indented_commands("python3 -m pytest")[0]
    # The setup line installs, then runs the demo; CI takes the install part of it.
    assert " && python3 -m jaxforget.main --config=configs/hard_disp.py:demo" in install
    install = install.split(" && ")[0]
    assert '-e ".[dev]"' in install and re.search(r"torch==\d", install), install
    r = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    torch_pin = re.search(r"torch==\S+", install).group(0)
    assert r.stdout.splitlines() == [f"python3 -m pip install {torch_pin}", install, tests]


def test_dev_extra_installs_every_extra_but_the_gpu_one():
    extras = _extras()
    assert {"test", "convert", "onnx", "align", "dev", "cuda12"} <= set(extras), extras
    (dev,) = re.findall(r"jaxforget\[([^\]]*)\]", extras["dev"])
    listed = {e.strip() for e in dev.split(",")}
    missing = set(extras) - {"dev", "cuda12"} - listed
    assert not missing, f"add {sorted(missing)} to the dev extra in pyproject.toml (what CI installs)"
    assert listed <= set(extras)
