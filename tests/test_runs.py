"""Run directories (rigl_harness/runs.py): locks, refusals, damaged files, full disks."""

import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import train
from helpers import REPO, SMOKE, build_run, cli, one_line_error, read_jsonl, rich_console
from rigl import SparsityConfig
from train import TrainConfig, resolve_recipe
from rigl_harness import runs, terminal


# --- runs.py: run directories --------------------------------------------------------------------


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    with runs.locked(out):  # as if another process were training there
        result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
    assert result.returncode == 2 and "being written by another process" in " ".join(result.stdout.split())
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused one


def test_out_that_is_not_a_run_directory_is_refused_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me")
    for out, message in ((tmp_path / "mine", "holds files that are not a run"), (tmp_path / "a-file", "is a file")):
        result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
        assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout
    assert (tmp_path / "mine" / "notes.txt").read_text() == (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "foreign"])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, finished_run, damage):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / "checkpoint.pt"
    contents = {"truncated": path.read_bytes()[:4000], "random": os.urandom(4000), "empty": b""}
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(contents[damage])
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out), "--resume")
    message = " ".join(result.stdout.split())
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert f"{path} is" in message and "not a checkpoint" in message, message


def test_a_malformed_config_json_is_named(tmp_path, finished_run):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "config.json").write_text("{ not json")
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out), "--resume")
    assert result.returncode == 2 and f"{out / 'config.json'} is not readable JSON" in " ".join(result.stdout.split())


def test_a_real_full_disk_keeps_the_previous_file_and_names_it_in_one_line(small_disk):
    """torch.save raises RuntimeError, not OSError, when the disk is full: the one write path
    turns it into the one-line error that names the file, and the previous file stays whole."""
    disk = small_disk("64k")
    path = disk / "checkpoint.pt"
    path.write_text("the last good checkpoint")
    console = rich_console()
    with pytest.raises(SystemExit) as stop, terminal.user_errors(console):
        runs.atomic_write(path, lambda handle: torch.save(torch.zeros(100_000), handle))
    message = " ".join(console.file.getvalue().split())
    assert stop.value.code == 2 and f"cannot write {path}: No space left on device" in message, message
    assert path.read_text() == "the last good checkpoint" and sorted(p.name for p in disk.iterdir()) == [path.name]


def test_a_stop_inside_torch_save_is_a_stop_not_a_write_error(tmp_path):
    """Ctrl-C or SIGTERM while torch.save writes comes back from torch as a RuntimeError around the
    KeyboardInterrupt: it stays a stop (exit 130 or 143), and the previous file is kept."""
    path = tmp_path / "checkpoint.pt"
    path.write_text("the last good checkpoint")

    class Interrupted(io.RawIOBase):
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def writable(self):
            return True

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.handle.write(data)
    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write(path, lambda handle: torch.save(torch.zeros(10_000), Interrupted(handle)))
    assert path.read_text() == "the last good checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_on_a_real_full_disk_stop_in_one_line(small_disk, command):
    disk = small_disk("96k")  # config.json fits, init.pt does not
    if command == "train":
        result = cli("train", *SMOKE, "--epochs", "1", "--out", str(disk / "run"))
    else:
        result = cli("sweep", str(disk), *[a.replace("--update-interval", "--update-intervals") for a in SMOKE],
                     "--epochs", "1")
    one_line_error(result, "cannot write", "init.pt: No space left on device")


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    """Two processes (two exports of one run) write one file at once: each through its own
    temporary file, so both finish and the file is one of theirs, whole."""
    path, started, go = tmp_path / "model.onnx", tmp_path / "started", tmp_path / "go"
    other = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, time
from rigl_harness import runs
def slow(handle):
    handle.write(b"first half, ")
    pathlib.Path({str(started)!r}).touch()
    while not pathlib.Path({str(go)!r}).exists():
        time.sleep(0.01)
    handle.write(b"second half of the other writer")
runs.atomic_write(pathlib.Path({str(path)!r}), slow)
"""], cwd=REPO, stderr=subprocess.PIPE, text=True)
    while not started.exists():
        assert other.poll() is None, other.stderr.read()
        time.sleep(0.01)
    runs.write_text(path, "this writer's whole file")
    go.touch()
    assert other.wait(timeout=60) == 0, other.stderr.read()
    assert path.read_text() == "first half, second half of the other writer"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_finished_run_always_has_the_records_it_summarises(tmp_path, finished_run):
    """The last checkpoint saved, its metrics.jsonl and densities.jsonl not (a full disk, or a kill
    in that window): --resume writes them before summary.json."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for name in ("metrics.jsonl", "densities.jsonl", "summary.json"):
        (out / name).unlink()
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out), "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(read_jsonl(out / "metrics.jsonl")) == 1 and len(read_jsonl(out / "densities.jsonl")) == 2
    assert (out / "summary.json").exists()


def test_workers_may_differ_but_on_imagenet_where_they_change_the_numbers():
    def config(dataset, workers):
        return {"train": {"dataset": dataset, "workers": workers, "device": "cpu"}, "sparsity": {}}
    assert runs.config_differences(config("cifar10", 1), config("cifar10", 2)) == []
    assert runs.config_differences(config("imagenet", 1), config("imagenet", 2)) == [
        "workers (run has 1, asked for 2)"]


# --- lottery tickets: runs.read_final_masks, runs.read_init and train.start_from_sources --------------------------------------


LOTTERY = [*SMOKE, "--method", "lottery", "--epochs", "1"]


@pytest.mark.parametrize("damage, words", [
    ("truncated checkpoint.pt", ["checkpoint.pt is damaged or not a checkpoint"]),
    ("garbage init.pt", ["init.pt is damaged or not initial weights"]),
    ("config.json without train", ["config.json is not a run's configuration"]),
])
def test_masks_from_a_damaged_run_is_named_in_one_line(tmp_path, pruning_run, damage, words):
    source = tmp_path / "source"
    shutil.copytree(pruning_run, source)
    if damage.startswith("truncated"):
        (source / "checkpoint.pt").write_bytes((pruning_run / "checkpoint.pt").read_bytes()[:3000])
    elif damage.startswith("garbage"):
        (source / "init.pt").write_bytes(os.urandom(3000))
    else:
        (source / "config.json").write_text(json.dumps({"sparsity": {}}))
    result = cli("train", *LOTTERY, "--masks-from", str(source), "--init-from", str(source),
                 "--out", str(tmp_path / "ticket"))
    one_line_error(result, *words)


def test_lottery_trains_only_the_final_masks_at_the_density_asked_for(tmp_path, pruning_run, finished_run):
    """Refused: the masks of a d = 0.1 run at --density 0.5 (in one line, from the command line), a
    run without masks, an unfinished run (its intermediate masks), and a checkpoint whose masks are
    not those of its summary."""
    def lottery(source, density=0.1):
        cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-10-1", train_subset=512, val_size=256,
                                         test_subset=256, batch_size=64, epochs=1, masks_from=str(source),
                                         init_from=str(source)))
        return build_run(cfg, SparsityConfig(method="lottery", density=density, update_interval=4))
    one_line_error(cli("train", *LOTTERY, "--density", "0.5", "--masks-from", str(pruning_run), "--init-from",
                       str(pruning_run), "--out", str(tmp_path / "ticket")),
                   "trained at density 0.1, not the --density 0.5")
    dense = tmp_path / "dense"
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-10-1", train_subset=128, val_size=0,
                                     test_subset=64, batch_size=64, epochs=1))
    train.start_run(cfg, SparsityConfig(method="dense"), dense, resume=False, console=rich_console())
    with pytest.raises(runs.UsageError, match=r"has no masks \(method dense trains dense\)"):
        lottery(dense)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(pruning_run, unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(runs.UsageError, match=r"has not finished \(no summary.json\)"):
        lottery(unfinished)
    summary = json.loads((pruning_run / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "density": 0.254}))
    with pytest.raises(runs.UsageError, match="masks have density 0.1000, not the 0.2540 of its summary.json"):
        lottery(unfinished)
    assert lottery(pruning_run).sparsity.total_row()["density"] == summary["density"]


def test_a_run_without_a_field_asked_for_is_a_run_of_other_settings():
    """No compatibility with configurations written by older code: a field the saved run lacks
    differs from any value asked for, so the run is refused, never resumed with a guess."""
    now = {"train": {"epochs": 2}, "sparsity": {"density": 0.1, "mask_depthwise": False}}
    before = {"train": {"epochs": 2}, "sparsity": {"density": 0.1}}
    assert runs.config_differences(before, now) == ["mask_depthwise (run has None, asked for False)"]
    assert runs.config_differences(now, now) == []
