"""studies/paper_tables.py: the paper's tables from a table run, and the target checks."""

import json

import pytest

from studies import paper_tables


def _cell(mean, std=0.0, n=3):
    return {"mean": mean, "std": std, "n": n}


def _agg():
    return {
        "Original": {"forget_base": {"mAP": _cell(0.90), "R@1": _cell(1.0), "CS": _cell(0.6)},
                     "cfp_fp": {"mAP": _cell(0.40)}, "cfp_fp_verification": {"acc": _cell(0.81)},
                     "retain_search": {"mAP": _cell(0.88)}},
        "hard_disp": {"forget_base": {"mAP": _cell(0.30, 0.02), "R@1": _cell(0.5), "CS": _cell(0.10)},
                      "cfp_fp": {"mAP": _cell(0.36)}, "cfp_fp_verification": {"acc": _cell(0.805)},
                      "retain_search": {"mAP": _cell(0.87)}},
        "finetune": {"forget_base": {"mAP": _cell(0.5)}},
    }


def test_tables_name_methods_as_the_paper_and_put_its_numbers_beside():
    md = paper_tables.tables_markdown(_agg())
    assert "| Hard Dispersion Loss | 3 | 30.00 +- 2.00 (16.00) | 50.00 +- 0.00 (65.87) |" in md
    assert "| Original | 3 | 90.00 +- 0.00 (88.70) |" in md
    assert "| finetune | 3 | 50.00 +- 0.00 |" in md  # not in the paper: no bracket
    assert "Table 3" not in md  # no extended protocol in this table run
    assert md.index("| Original") < md.index("| Hard Dispersion Loss") < md.index("| finetune")


def test_targets_say_met_or_missed_with_the_margin(tmp_path, capsys):
    md = paper_tables.targets_markdown(_agg())
    assert "forget mAP kept: 33.3% of the Original's (paper 18%); target <= 35%: **met**" in md
    assert "CFP-FP mAP: 36.00 vs 40.00 (drop 4.00 points); target drop <= 3.0: **missed**" in md
    assert "forget R@1 50.00 (paper 65.87); target <= 40 (beyond the paper): **missed**" in md
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_agg()))
    assert paper_tables.main([str(path), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == capsys.readouterr().out


def test_the_papers_shape_is_checked_for_the_rows_present():
    agg = _agg()
    agg["rl"] = {"forget_base": {"mAP": _cell(0.87)}}
    agg["ga"] = {"forget_base": {"mAP": _cell(0.80)}}
    agg["bs"] = {"forget_base": {"mAP": _cell(0.60)}}
    md = paper_tables.shape_markdown(agg)
    assert "- Random Labeling: forget mAP 87.00 vs 90.00 (drop 3.00 points); paper: within ~5: " \
           "**as in the paper**" in md
    assert "- Gradient Ascent: forget mAP 80.00 vs 90.00 (drop 10.00 points); paper: within ~5: " \
           "**not as in the paper**" in md
    assert ("- Boundary Shrink: forget mAP 60.00; paper: below the baselines above (80.00 at least) "
            "and above the dispersion losses (30.00 at most): **as in the paper**") in md
    agg["bs"] = {"forget_base": {"mAP": _cell(0.20)}}
    assert "**not as in the paper**" in paper_tables.shape_markdown(agg).splitlines()[-1]
    assert paper_tables.shape_markdown({"rl": agg["rl"]}) == ""  # no Original: nothing to check


def test_variant_rows_carry_their_tag_and_the_beyond_bound():
    agg = _agg()
    agg["hard_disp+linear1"] = agg.pop("hard_disp")
    md = paper_tables.tables_markdown(agg)
    assert "| Hard Dispersion Loss + linear1 | 3 | 30.00 +- 2.00 |" in md  # no paper number
    assert paper_tables.targets_markdown(agg) == ""  # no hard_disp row
    md = paper_tables.targets_markdown(agg, "hard_disp+linear1")
    assert "33.3% of the Original's (paper 18%); target <= 18%: **missed**" in md


def test_run_folders_are_aggregated_and_unfinished_ones_left_out(tmp_path, capsys):
    def run(name, seed, forget_map):
        d = tmp_path / name / f"seed_{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "meta": {"method": name, "seed": seed},
            "original": {"forget_base": {"mAP": 0.9}},
            "unlearned": {"forget_base": {"mAP": forget_map}}}))
        return d

    dirs = [run("hard_disp", 0, 0.3), run("hard_disp", 1, 0.4)]
    (tmp_path / "hard_disp" / "seed_2").mkdir()  # still running: no results.json
    assert paper_tables.main([str(d) for d in dirs] + [str(tmp_path / "hard_disp" / "seed_2")]) == 0
    out, err = capsys.readouterr()
    assert "| Hard Dispersion Loss | 2 | 35.00 +- 7.07 (16.00) |" in out
    assert "| Original | 2 | 90.00 +- 0.00 (88.70) |" in out
    assert "seed_2: no results.json" in err
    with pytest.raises(SystemExit, match="cannot read the runs"):
        paper_tables.main([str(tmp_path / "nowhere.json"), str(dirs[0])])


def test_into_replaces_only_its_block_of_the_page(tmp_path, capsys):
    d = tmp_path / "hard_disp" / "seed_0"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "meta": {"method": "hard_disp", "seed": 0},
        "original": {"forget_base": {"mAP": 0.9}},
        "unlearned": {"forget_base": {"mAP": 0.3}}}))
    page = tmp_path / "RESULTS.md"
    page.write_text("## 4b\n\n<!-- t:begin -->\nold tables\n<!-- t:end -->\n\nprose after\n")
    assert paper_tables.main([str(d), f"--into={page}:t"]) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert text.startswith("## 4b\n\n<!-- t:begin -->\n#### Table 1:")  # one level down
    assert "old tables" not in text and text.endswith("<!-- t:end -->\n\nprose after\n")
    assert "| Hard Dispersion Loss | 1 | 30.00 +- 0.00 (16.00) |" in text
    assert printed.startswith("### Table 1:")  # the printed copy keeps its headings
    paper_tables.main([str(d), f"--into={page}:t"])
    assert page.read_text() == text  # a second fill changes nothing
    with pytest.raises(SystemExit, match="needs exactly one '<!-- other:begin -->'"):
        paper_tables.main([str(d), f"--into={page}:other"])
