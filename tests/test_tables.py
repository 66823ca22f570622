"""utils.tables: parameter table against the paper, log comparison."""
import csv

import pytest

from utils.tables import PAPER_ROWS, REFERENCE_LOGS, compare_logs, main, match_mark, read_curve, reference_path


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
