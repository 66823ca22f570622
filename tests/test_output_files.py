"""No command writes over an input or over a file it did not write: results files, converted checkpoints, hub
export folders and analysis outputs are refused by name, with --overwrite (or another path) as the way out;
a command's own earlier outputs are replaced (utils.io.outputs)."""
import json
import os

import pytest
import torch

import validate
from models import create_model
from tests.test_validate import TINY
from utils.analysis import frequency, tables
from utils.errors import ConfigError
from utils.io.outputs import OUTPUTS_MANIFEST, check_outputs, record_outputs
from utils.training import checkpoint as ckpt_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("maxformer_cifar", embed_dims=16, num_heads=1, num_classes=10, T=1)
    folder = tmp_path_factory.mktemp("run")
    for name in ("last.pth.tar", "best.pth.tar"):
        torch.save({"state_dict": model.state_dict(), "epoch": 0, "arch": "maxformer_cifar"}, folder / name)
    (folder / "args.yaml").write_text("model: maxformer_cifar\n")
    (folder / "summary.csv").write_text("epoch,eval_top1\n0,10\n")
    return folder


def _sizes(folder):
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def test_the_rule(tmp_path):
    mine, ours = tmp_path / "mine.csv", tmp_path / "ours.csv"
    mine.write_text("user data\n")
    with pytest.raises(ConfigError, match=r"--csv .*mine.csv already exists: it is a file this command did not "
                                          r"write, and it is not replaced. Choose another path, or pass --overwrite"):
        check_outputs({"--csv": mine})
    check_outputs({"--csv": mine}, overwrite=True)
    with pytest.raises(ConfigError, match="is also an input of this command"):
        check_outputs({"--csv": mine}, overwrite=True, inputs=[str(mine)])
    ours.write_text("a\n")
    record_outputs(ours)
    check_outputs({"--csv": ours})  # written by a command: replaced without the flag
    ours.write_text("edited by hand since\n")
    with pytest.raises(ConfigError, match="already exists"):
        check_outputs({"--csv": ours})
    assert set(json.loads((tmp_path / OUTPUTS_MANIFEST).read_text())) == {"ours.csv"}


def test_validate_never_writes_its_results_over_the_checkpoint_or_run_files(run_dir, tmp_path, capsys):
    before = _sizes(run_dir)
    base = TINY + ["--checkpoint", str(run_dir / "last.pth.tar"), "--results-file"]
    assert validate.main(base + [str(run_dir / "last.pth.tar")]) == 2
    assert "last.pth.tar is also an input of this command: writing it would destroy" in capsys.readouterr().err
    assert validate.main(base + [str(run_dir / "best.pth.tar")]) == 2
    assert f"it is a checkpoint of the run folder {run_dir}" in capsys.readouterr().err
    assert validate.main(base + [str(run_dir / "summary.csv")]) == 2
    assert "it is a file of the run folder" in capsys.readouterr().err
    assert _sizes(run_dir) == before
    mine = tmp_path / "notes.json"
    mine.write_text("{}")
    assert validate.main(base + [str(mine)]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err and mine.read_text() == "{}"
    assert validate.main(base + [str(mine), "--overwrite", "true"]) == 0
    assert json.loads(mine.read_text())["model"] == "maxformer_cifar"
    assert validate.main(base + [str(mine)]) == 0  # its own results: replaced when run again


def test_convert_refuses_an_existing_out_it_did_not_write(run_dir, tmp_path, capsys):
    out = tmp_path / "summary.csv"
    out.write_text("epoch,top1\n")
    argv = ["convert", str(run_dir / "last.pth.tar"), str(out), "--model-kwargs", "embed_dims=16", "T=1"]
    assert ckpt_cli.main(argv) == 2
    assert "OUT" in capsys.readouterr().err and out.read_text() == "epoch,top1\n"
    assert ckpt_cli.main(["convert", str(run_dir / "last.pth.tar"), str(run_dir / "last.pth.tar")]) == 2
    assert "also an input" in capsys.readouterr().err
    assert ckpt_cli.main(argv + ["--overwrite"]) == 0
    assert ckpt_cli.main(argv) == 0  # its own earlier output


def test_hub_export_keeps_a_users_readme(tmp_path, capsys):
    from tests.test_pretrained import SMALL, released_file
    from utils.tools import hub_export

    name = "maxformer_10_768.t1_in1k"
    released_file(tmp_path / "w.pth.tar", name, **SMALL)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    with pytest.raises(ConfigError, match="OUTDIR's README.md .* already exists"):
        hub_export.export(name, tmp_path / "w.pth.tar", str(out), SMALL)
    assert (out / "README.md").read_text() == "my notes\n" and sorted(os.listdir(out)) == ["README.md"]
    hub_export.export(name, tmp_path / "w.pth.tar", str(out), SMALL, overwrite=True)
    hub_export.export(name, tmp_path / "w.pth.tar", str(out), SMALL)  # an earlier export: replaced
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]


def test_analysis_outputs_refuse_files_they_did_not_write(run_dir, tmp_path, capsys):
    (tmp_path / "toy.csv").write_text("mine\n")
    with pytest.raises(SystemExit):
        frequency.main(["toy", "-o", str(tmp_path)])
    assert "toy.csv already exists" in capsys.readouterr().err and (tmp_path / "toy.csv").read_text() == "mine\n"
    figure = run_dir / "summary.csv"
    with pytest.raises(ConfigError, match="also an input"):
        tables.main(["compare-log", "--run", str(figure), "--reference", "cifar100", "--figure", str(figure)])
    mine = tmp_path / "t.csv"
    mine.write_text("mine\n")
    with pytest.raises(ConfigError, match="--csv .* already exists"):
        tables.main(["params", "--csv", str(mine)])
    assert mine.read_text() == "mine\n"
    from utils.analysis import energy

    (tmp_path / "maxformer_cifar_T1_energy.json").write_text("{}")
    with pytest.raises(SystemExit):
        energy.main(["--model", "maxformer_cifar", "--model-kwargs", "embed_dims=16", "--T", "1", "-o", str(tmp_path)])
    assert "maxformer_cifar_T1_energy.json already exists" in capsys.readouterr().err


def test_benchmark_appends_to_its_own_csv_only(tmp_path, capsys):
    import benchmark

    summary = tmp_path / "summary.csv"
    summary.write_text("epoch,eval_top1\n0,10\n")
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "maxformer_cifar", "--smoke", "--csv", str(summary)])
    assert "it appends to a CSV of benchmark rows only" in capsys.readouterr().err
    assert summary.read_text() == "epoch,eval_top1\n0,10\n"
