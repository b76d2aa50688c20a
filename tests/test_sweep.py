"""`python rigl.py sweep` (rigl_harness/sweep.py): cells, names, resume, refusals."""

import fcntl
import signal
import subprocess
import sys

import pytest

from helpers import REPO, cli, read_jsonl, run, wait_for_first_epoch
from rigl import SparsityConfig
from rigl_harness import cli as command_line
from rigl_harness import runs, studies, sweep
from train import TrainConfig


# --- `python rigl.py sweep` ---------------------------------------------


SWEEP_SMOKE = ["--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
               "--test-subset", "256", "--batch-size", "64", "--update-intervals", "4"]


@pytest.mark.parametrize("changed, name", [({}, "rigl-erk-d0.1-x1.0-s0"),
                                           ({"drop_fraction": 0.5}, "rigl-erk-d0.1-x1.0-a0.5-s0"),
                                           ({"update_interval": 4, "lr": 0.05}, "rigl-erk-d0.1-x1.0-dt4-lr0.05-s0")])
def test_train_names_its_default_run_directory_as_a_sweep_names_the_same_cell(changed, name):
    """One naming scheme (runs.run_name): train's default --out is runs/<dataset>-<model>-<the cell's name>."""
    grid = sweep.parse_grid({**{axis: studies.default_of(field) for axis, (field, _) in sweep.AXES.items()},
                             **{axis: str(changed[field]) for axis, (field, _) in sweep.AXES.items() if field in changed}})
    [cell] = sweep.cells(grid)
    assert runs.run_name(cell, sweep.varied_fields(grid, [cell])) == name
    sparse_cfg = SparsityConfig(**{k: v for k, v in changed.items() if k != "lr"})
    assert command_line.default_name(TrainConfig(), sparse_cfg, changed.get("lr")) == name


def test_train_writes_its_default_run_directory_under_the_name_a_sweep_gives_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("train", *SWEEP_SMOKE[:-2], "--update-interval", "4", "--drop-fraction", "0.5", "--epochs", "1")
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "runs" / "synthetic-wrn-10-1-rigl-erk-d0.1-x1.0-a0.5-dt4-s0" / "summary.json").is_file()


def test_sweep_lists_its_cells_and_names_them_readably(tmp_path):
    result = cli("sweep", str(tmp_path), "--methods", "dense,rigl,pruning,lottery", "--densities", "0.1,0.2",
                 "--distributions", "erk,uniform", "--seeds", "0,1", "--dry-run", *SWEEP_SMOKE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 3 * 8  # dense once per seed; 2 densities × 2 distributions × 2 seeds each
    assert lines[0].endswith("pruning-erk-d0.1-x1.0-dt4-s0: new")  # pruning runs before its lottery
    assert any(line.endswith("dense-x1.0-dt4-s1: new") for line in lines)
    assert not any(tmp_path.iterdir())  # a dry run trains nothing
    bad = run("sweep", str(tmp_path), "--methods", "rigl,lottery", "--dry-run", *SWEEP_SMOKE)
    assert bad.returncode == 2 and "add pruning to --methods" in bad.stdout


def test_sweep_skips_finished_cells_and_resumes_a_killed_one(tmp_path):
    args = [sys.executable, "rigl.py", "sweep", str(tmp_path), "--methods", "static,set", *SWEEP_SMOKE,
            "--epochs", "3"]
    first, second = tmp_path / "static-erk-d0.1-x1.0-dt4-s0", tmp_path / "set-erk-d0.1-x1.0-dt4-s0"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_first_epoch(process, second)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (first / "summary.json").exists() and not (second / "summary.json").exists()
    finished_first = (first / "summary.json").read_text()
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{first.name}: done" in again.stdout and f"{second.name}: resume" in again.stdout
    assert (first / "summary.json").read_text() == finished_first  # untouched
    assert len(read_jsonl(second / "metrics.jsonl")) == 3 and (second / "summary.json").exists()
    report_run = cli("report", str(tmp_path))
    assert report_run.returncode == 0, report_run.stderr
    assert "Static (ERK)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "figures" / "accuracy_vs_density.png").stat().st_size > 5000
    assert run("report", str(tmp_path / "nothing-here")).returncode == 2


def test_a_sweep_refuses_cells_trained_with_other_settings(tmp_path):
    base = ["sweep", str(tmp_path), "--methods", "static", *SWEEP_SMOKE]
    first = cli(*base, "--epochs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    again = cli(*base, "--epochs", "2", "--momentum", "0.8")
    message = " ".join(again.stdout.split())
    assert again.returncode == 2 and "static-erk-d0.1-x1.0-dt4-s0 holds a run with other settings" in message
    assert "epochs (run has 1, asked for 2)" in message and "momentum (run has 0.9, asked for 0.8)" in message
    assert cli(*base, "--epochs", "1").returncode == 0  # the same settings: done, nothing to do


@pytest.mark.parametrize("args, message", [
    (["--densities", "abc"], "--densities takes comma-separated float values"),
    (["--methods", ""], "--methods needs at least one value"),
    (["--density", "0.2"], "sweep sets --density for each run"),
    (["--lr", "0.05"], "sweep sets --lr for each run"),
    (["--lrs", "0.1,x"], "--lrs takes comma-separated float values"),
])
def test_bad_sweep_grids_get_one_line(tmp_path, args, message):
    result = run("sweep", str(tmp_path), "--dry-run", *args)
    assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout


def test_a_lottery_sweep_resumes_with_root_spelled_otherwise(tmp_path):
    """A lottery cell records its pruning cell's path absolute, so ROOT given relative first and
    absolute later is the same sweep."""
    args = ["sweep", "--methods", "pruning,lottery", *SWEEP_SMOKE, "--epochs", "1"]
    first = subprocess.run([sys.executable, str(REPO / "rigl.py"), args[0], "sweeps", *args[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    again = cli(args[0], str(tmp_path / "sweeps"), *args[1:])
    assert again.returncode == 0 and again.stdout.count(": done") == 2, again.stdout + again.stderr


def test_a_lottery_cell_whose_pruning_run_another_worker_trains_is_skipped_not_stopped_on(tmp_path):
    """Another sweep process holds the pruning cell (its run lock): this one skips the pruning cell
    and the lottery cell that retrains its masks, and ends normally; that process trains both."""
    pruning = tmp_path / "pruning-erk-d0.1-x1.0-dt4-s0"
    pruning.mkdir()
    with open(pruning / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the other worker's runs.locked
        result = run("sweep", str(tmp_path), "--methods", "pruning,lottery", *SWEEP_SMOKE, "--epochs", "1")
    assert result.returncode == 0, result.stdout
    lines = " ".join(result.stdout.split())
    assert "pruning-erk-d0.1-x1.0-dt4-s0: held by another process, skipped" in lines
    assert "lottery-erk-d0.1-x1.0-dt4-s0: its pruning run is being trained by another process, skipped" in lines
    assert not (tmp_path / "lottery-erk-d0.1-x1.0-dt4-s0").exists()


def test_two_sweeps_on_one_root_split_the_grid_each_cell_once(tmp_path):
    """The report's learning-rate study in small: --lrs × seeds, two sweep processes at once."""
    args = [sys.executable, "rigl.py", "sweep", str(tmp_path), "--methods", "static", "--lrs", "0.1,0.05",
            "--seeds", "0,1", *SWEEP_SMOKE, "--train-subset", "256", "--val-size", "128", "--workers", "0",
            "--epochs", "1"]
    workers = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    cells = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert cells == [f"static-erk-d0.1-x1.0-dt4-lr{lr}-s{s}" for lr in (0.05, 0.1) for s in (0, 1)]
    assert sum(out.count("done: test acc") for out in outputs) == 4  # each cell trained by one process
    assert all(len(read_jsonl(tmp_path / cell / "metrics.jsonl")) == 1 for cell in cells)
    report_run = cli("report", str(tmp_path))
    assert report_run.returncode == 0, report_run.stdout + report_run.stderr
    assert "Static (ERK) lr=0.05" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "figures" / "accuracy_vs_lr.png").stat().st_size > 5000
