"""utils.analysis.tables: parameter table against the paper, log comparison."""
import csv

import pytest

from utils.analysis.tables import PAPER_ROWS, REFERENCE_LOGS, compare_logs, main, match_mark, read_curve, reference_path


def test_match_marks():
    assert match_mark(63.9922, 63.99) == "✓"
    assert match_mark(16.2372, 16.23) == "✓"  # the paper truncates some counts
    assert match_mark(6.7062, 6.74) == "≈"
    assert match_mark(10.0, 6.57) == "✗"


def test_reference_logs_ship_with_repo():
    for name in REFERENCE_LOGS:
        cols = read_curve(reference_path(name))
        assert len(cols["epoch"]) == len(cols["eval_top1"]) > 90
    assert max(read_curve(reference_path("imagenet_10_768_t4"))["eval_top1"]) == pytest.approx(82.391, abs=1e-3)


def test_tables_command_runs_and_matches_paper(capsys, tmp_path):
    assert main(["--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "maxformer_10_768" in out and "parameter counts match the paper" in out
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) >= len(PAPER_ROWS)
    by = {(r["model"], r["setting"]): r for r in rows}
    assert by[("maxformer_10_768", "ImageNet")]["match"] == "✓"
    assert int(by[("maxformer_10_768", "ImageNet")]["params"]) == 63992200


def test_compare_log_writes_png(tmp_path):
    run = tmp_path / "summary.csv"
    with open(run, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "eval_top1", "eval_loss", "train_loss"])
        for e in range(5):
            w.writerow([e, 10 + e, 3 - 0.1 * e, 3.5 - 0.1 * e])
    s = compare_logs(str(run), "cifar100", str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert s["run_best"] == 14 and s["ref_best"] == pytest.approx(82.65)
    with pytest.raises(SystemExit, match="unknown reference log"):
        compare_logs(str(run), "cifar1000", str(tmp_path / "d.png"))


# ----------------------------------------------------------------------------- sweep results vs the paper
import os  # noqa: E402

import yaml  # noqa: E402

from utils.analysis.tables import config_claims, result_rows, results_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION = os.path.join(ROOT, "cifar10-100", "ablations", "c100_orig-max-max_ssa-ssa-ssa.yaml")


def fake_run(root, config, seed, tops, total, **args):
    """A run folder as train.py leaves it: args.yaml and summary.csv."""
    own = yaml.safe_load(open(config))
    name = os.path.splitext(os.path.basename(config))[0]
    d = root / f"{name}_s{seed}"
    d.mkdir()
    base = dict(config=config, experiment=f"{name}_s{seed}", seed=seed, model="maxformer_cifar", dataset="cifar100",
                T=4, model_kwargs=own.get("model_kwargs", {}), run_info={"total_epochs": total, "num_classes": 100})
    (d / "args.yaml").write_text(yaml.safe_dump({**base, **args}))
    (d / "summary.csv").write_text("epoch,eval_top1\n" + "".join(f"{e},{t}\n" for e, t in enumerate(tops)))


def test_config_headers_give_the_paper_rows():
    claims = config_claims(ABLATION)
    assert [(c.table, c.top1) for c in claims] == [("4", 82.23), ("7", 82.13)]
    assert claims[1].row == "c100_orig-max-max_ssa-ssa-ssa groups (4) and (6)"
    assert [(c.table, c.top1) for c in config_claims(os.path.join(ROOT, "event", "cifar10dvs.yaml"))] == [("2", 84.2)]


def test_results_mean_std_over_seeds_and_unfinished_rows(tmp_path, capsys):
    fake_run(tmp_path, ABLATION, 0, [50.0, 80.0, 79.0], 3)  # finished, best 80
    fake_run(tmp_path, ABLATION, 1, [50.0, 82.0], 3)  # 2 of 3 epochs, best 82
    fake_run(tmp_path, ABLATION, 2, [81.0, 60.0, 70.0], 3)  # finished, best 81
    cifar100 = os.path.join(ROOT, "cifar10-100", "cifar100.yaml")
    fake_run(tmp_path, cifar100, 0, [83.0, 82.5], 2, model="max_resnet18", model_kwargs={})  # --model override
    rows = result_rows(str(tmp_path))
    by = {(r["table"], r["row"]): r for r in rows}
    t4 = by[("4", "c100_orig-max-max_ssa-ssa-ssa")]
    assert t4["mean_top1"] == pytest.approx(81.0) and t4["std_top1"] == pytest.approx(1.0) and t4["n_seeds"] == 3
    assert t4["diff"] == pytest.approx(81.0 - 82.23) and (t4["epochs_done"], t4["epochs_planned"]) == (2, 3)
    assert t4["status"] == "unfinished (2/3 runs finished)"
    assert by[("7", "c100_orig-max-max_ssa-ssa-ssa groups (4) and (6)")]["paper_top1"] == 82.13
    # the config header names Max-Former; the run trained max_resnet18, so the paper's Table 5 row applies
    t5 = by[("5", "max_resnet18 CIFAR-100 [3,3,2] T4")]
    assert t5["paper_top1"] == 83.06 and t5["std_top1"] is None and t5["status"] == "finished"

    assert results_main(["--runs", str(tmp_path), "--table", "4", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "| 4 | c100_orig-max-max_ssa-ssa-ssa | 82.23 | 81.00 ± 1.00 | 3 | 2/3 | -1.23 | **unfinished" in out
    assert "Table 7" not in out and "groups (4)" not in out
    rows = list(csv.DictReader(open(tmp_path / "t" / "table4.csv")))
    assert len(rows) == 1 and float(rows[0]["mean_top1"]) == pytest.approx(81.0)
    assert (tmp_path / "t" / "table4.md").read_text().count("\n| 4 |") == 1
    assert (tmp_path / "t" / "table4.png").stat().st_size > 5000


def test_results_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--runs", str(tmp_path / "nope")])
    assert exc.value.code == 2 and "folder not found" in capsys.readouterr().err
    assert main(["--runs", str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_copies_of_a_run_folder_count_once_and_are_named(tmp_path, capsys):
    import shutil

    fake_run(tmp_path, ABLATION, 0, [50.0, 80.0, 79.0], 3)
    fake_run(tmp_path, ABLATION, 1, [50.0, 82.0, 81.0], 3)
    name = os.path.splitext(os.path.basename(ABLATION))[0]
    shutil.copytree(tmp_path / f"{name}_s0", tmp_path / "backup" / f"{name}_s0")
    shutil.copytree(tmp_path / f"{name}_s0", tmp_path / "renamed")
    args = yaml.safe_load(open(tmp_path / "renamed" / "args.yaml"))
    (tmp_path / "renamed" / "args.yaml").write_text(yaml.safe_dump({**args, "experiment": "renamed",
                                                                    "output": "/elsewhere"}))
    assert results_main(["--runs", str(tmp_path), "--table", "4", "--out", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert "81.00 ± 1.41 | 2 |" in out  # seeds 0 and 1, not 0, 0, 0 and 1
    note = [line for line in err.splitlines() if "hold the same run" in line]
    assert len(note) == 1 and all(p in note[0] for p in (f"{name}_s0", "backup", "renamed")) and "seed 0" in note[0]


# ----------------------------------------------------------------------------- every option is read
def test_weights_names_and_files_are_checked_before_the_table(tmp_path, capsys):
    """--weights used to be skipped for a misspelled or non-Table-3 model, and a bad file was never read."""
    import torch

    from utils.errors import CheckpointError, ConfigError

    good = tmp_path / "w.pth.tar"
    torch.save({"state_dict": {"a": torch.zeros(3)}}, good)
    with pytest.raises(ConfigError, match="energy only for maxformer_10_384"):
        main(["params", "--weights", f"maxformr_10_384={good}"])
    with pytest.raises(ConfigError, match="Table 3 has maxformer_10_384 at maxformer_10_384@T4"):
        main(["params", "--weights", f"maxformer_10_384@T1={good}"])
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated"):
        main(["params", "--weights", f"maxformer_10_384={cut}"])
    with pytest.raises(ConfigError, match="--img-size is the input size of the energy estimate"):
        main(["params", "--img-size", "64"])


def test_compare_log_names_a_checkpoint_given_as_a_log(tmp_path):
    import torch

    ck = tmp_path / "last.pth.tar"
    torch.save({"state_dict": {"a": torch.zeros(3)}}, ck)
    with pytest.raises(SystemExit, match="is a checkpoint .*not a CSV log"):
        read_curve(str(ck))
