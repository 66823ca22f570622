"""benchmark.py in smoke mode (tiny model, one step): output format, CSV, options, errors. No timing asserts."""
import csv
import json
import os

import pytest

import benchmark

KEYS = {"model", "mode", "batch_size", "T", "img_size", "img_per_s", "ms_per_step", "peak_mem_mb",
        "gflop_per_img", "gflop_per_s"}


def _run(tmp_path, *args):
    out = tmp_path / "bench.csv"
    rows = benchmark.main(["--smoke", "--csv", str(out), *args])
    return rows, out


def test_a_csv_with_old_columns_is_rewritten_with_the_current_ones(tmp_path):
    out = tmp_path / "bench.csv"
    out.write_text("model,mode\nold_model,train\n")
    benchmark.append_csv(str(out), {"model": "new_model", "mode": "infer"})
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == benchmark.CSV_FIELDS
        assert [(r["model"], r["mode"]) for r in reader] == [("old_model", "train"), ("new_model", "infer")]
    assert os.listdir(tmp_path) == ["bench.csv"]  # no temp file left


def test_smoke_train_eager_prints_json_and_appends_csv(tmp_path, capsys):
    rows, out = _run(tmp_path, "--model", "maxformer_cifar", "--eager")
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    row = json.loads(last)
    assert KEYS <= set(row)
    assert row == rows[0]
    assert (row["model"], row["mode"], row["batch_size"], row["T"], row["img_size"]) == (
        "maxformer_cifar", "train", 2, 1, 32)
    assert row["neuron_impl"] == "spikingjelly" and row["compile"] == "none"
    assert row["img_per_s"] > 0 and row["peak_mem_mb"] > 0 and row["gflop_per_img"] > 0
    # a train step counts 3 forward passes
    assert row["gflop_per_s"] == pytest.approx(3 * row["gflop_per_img"] * row["img_per_s"], rel=0.02)
    with open(out) as f:
        saved = list(csv.DictReader(f))
    assert len(saved) == 1 and saved[0]["model"] == "maxformer_cifar" and float(saved[0]["img_per_s"]) > 0
    benchmark.main(["--smoke", "--csv", str(out), "--eager", "--mode", "infer"])
    with open(out) as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["train", "infer"]


def test_smoke_infer_fast_path_without_compile(tmp_path):
    rows, _ = _run(tmp_path, "--mode", "infer", "--compile", "none", "--channels-last",
                   "--model-kwargs", "neuron=if", "tau=3.0")
    row = rows[0]
    assert row["fold_bn"] is True and row["channels_last"] is True and row["neuron_impl"] == "torch"
    assert json.loads(row["model_kwargs"])["neuron"] == "if"
    assert row["gflop_per_s"] == pytest.approx(row["gflop_per_img"] * row["img_per_s"], rel=0.02)


def test_compare_eager_reports_ratio(tmp_path):
    rows, _ = _run(tmp_path, "--mode", "infer", "--compile", "none", "--compare-eager", "--amp", "bf16")
    row = rows[0]
    assert row["eager_ms_per_step"] > 0
    assert row["speedup_vs_eager"] == pytest.approx(row["eager_ms_per_step"] / row["ms_per_step"], rel=0.01)


def test_sweep_over_T_and_batch(tmp_path):
    rows, out = _run(tmp_path, "--eager", "--mode", "infer", "--sweep", "--sweep-T", "1,2",
                     "--sweep-batch-sizes", "2", "--no-subprocess")
    assert [(r["T"], r["batch_size"]) for r in rows] == [(1, 2), (2, 2)]
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == 2


def test_sweep_child_argv_drops_sweep_options():
    argv = ["--model", "m", "--sweep", "--sweep-T", "1,2", "--T", "4", "-b", "8", "--csv", "x.csv", "--peak"]
    assert benchmark._child_argv(argv, 2, 16) == ["--model", "m", "--T", "2", "--batch-size", "16", "--csv", ""]


def test_matmul_peak_and_fraction(tmp_path):
    peak = benchmark.matmul_peak("cpu", n=128, seconds=0.05)
    assert set(peak) >= {"fp32", "bf16"} and all(v > 0 for v in peak.values())


def test_model_kwargs_errors(tmp_path, capsys):
    # the one grammar of every --model-kwargs flag (models.parse_model_kwargs): YAML values, bare comma lists
    rows, _ = _run(tmp_path, "--eager", "--mode", "infer", "--model-kwargs", "neuron=if", "v_reset=none", "tau=2.5")
    assert json.loads(rows[0]["model_kwargs"])["v_reset"] is None
    from models import parse_model_kwargs
    assert parse_model_kwargs(["depths=1,1,2", "mixers=[ssa, max]", "tau=2.5"]) == {
        "depths": [1, 1, 2], "mixers": ["ssa", "max"], "tau": 2.5}
    for argv, message in ((["--model-kwargs", "embed_dims"], "key=value"),
                          (["--model", "maxformer_cifr"], "unknown model 'maxformer_cifr'. Did you mean")):
        with pytest.raises(SystemExit) as exc:  # refused before any model is built
            _run(tmp_path, "--eager", *argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--smoke", "--mode", "validate"])


def test_tensor_peak_counts_live_and_step_allocations():
    import torch
    held = torch.zeros(1024, 1024)  # 4 MiB alive before the step

    def step():
        a = torch.ones(2048, 1024)  # 8 MiB
        b = a * 2  # +8 MiB -> 16 MiB held by the step at its peak
        del a, b

    assert benchmark.tensor_peak_mb(step, lambda: [held]) == pytest.approx(20.0, abs=0.5)


def test_compare_eager_train_reports_tensor_peak_and_old_csv_is_upgraded(tmp_path):
    out = tmp_path / "bench.csv"
    out.write_text("model,mode,img_per_s\nold_model,train,1.0\n")  # a file from an older column set
    rows = benchmark.main(["--smoke", "--csv", str(out), "--compile", "none", "--compare-eager",
                           "--grad-checkpointing", "--compact-spikes"])
    row = rows[0]
    assert row["grad_checkpointing"] and row["compact_spikes"] and row["fast_conv"] and row["fast_pool"]
    assert row["tensor_peak_mb"] > 0 and row["eager_tensor_peak_mb"] > 0
    assert row["tensor_peak_vs_eager"] == pytest.approx(row["tensor_peak_mb"] / row["eager_tensor_peak_mb"], rel=0.01)
    with open(out) as f:
        saved = list(csv.DictReader(f))
    assert [r["model"] for r in saved] == ["old_model", "maxformer_cifar"]
    assert saved[0]["img_per_s"] == "1.0" and saved[1]["tensor_peak_mb"]
