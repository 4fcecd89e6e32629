"""tools/run_table.py: the method x seed table, resumable, its page written after every run."""

import json

import pytest

from tools import run_table

# tests/runner_fixtures.tiny_config as --set overrides of the demo preset.
TINY = ["model.width_mult=0.125", "model.input_size=(16, 16)", "model.embedding_size=32",
        "data.num_identities=16", "data.images_per_identity=6", "forget.num_identities=4",
        "pretrain.steps=2", "pretrain.batch_size=16", "eval.batch_size=32", "eval.tsne=False",
        "base_seed=0", "method.steps=1", "method.batch_size=8", "method.retain_batch_size=8"]


def test_table_pages_fill_run_by_run_and_a_rerun_skips_finished_runs(tmp_path, capsys, monkeypatch):
    def args(seeds):
        return ["--arg=demo", "--methods=project", f"--seeds={seeds}", f"--workdir={tmp_path}"] + [
            a for t in TINY for a in ("--set", t)]

    pages = []
    write = run_table.write_table
    monkeypatch.setattr(run_table, "write_table", lambda root: pages.append(write(root)[1]) or write(root))
    assert run_table.main(args("0")) == 0
    assert pages == [1, 1]  # after the run, then the final page
    capsys.readouterr()
    assert run_table.main(args("0,1")) == 0  # seed 0 is done: only seed 1 runs
    assert capsys.readouterr().err.count("done earlier") == 1
    assert pages == [1, 1, 2, 2]  # the page holds the earlier call's run too
    agg = json.loads((tmp_path / "table.json").read_text())
    assert agg["project"]["forget_base"]["mAP"]["n"] == 2
    assert "| project | 2 |" in (tmp_path / "table.md").read_text()
    assert len(list((tmp_path / "cache" / "base_models").iterdir())) == 1  # base_seed: one base model

    # A tagged variant gets its own folder and rows beside the method's, and shares the base model.
    assert run_table.main(args("0") + ["--tag=no.flip", "--set", "method.flip=False"]) == 0
    agg = json.loads((tmp_path / "table.json").read_text())
    assert agg["project+no.flip"]["forget_base"]["mAP"]["n"] == 1
    assert agg["project"]["forget_base"]["mAP"]["n"] == 2
    assert (tmp_path / "project+no.flip" / "seed_0" / "results.json").exists()
    assert len(list((tmp_path / "cache" / "base_models").iterdir())) == 1


def test_a_tag_must_be_a_folder_name(tmp_path):
    with pytest.raises(SystemExit, match="--tag='a/b'"):
        run_table.main(["--arg=demo", "--methods=project", f"--workdir={tmp_path}", "--tag=a/b"])
