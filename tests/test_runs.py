"""Run directories (rigl_harness/runs.py): locks, refusals, damaged files, full disks."""

import os

import pytest
import torch

from helpers import SMOKE, cli, rich_console
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


def test_a_full_disk_keeps_the_previous_file_and_says_so_in_one_line(tmp_path):
    import errno

    path = tmp_path / "checkpoint.pt"
    path.write_text("the last good checkpoint")

    def full(tmp):
        tmp.write_text("half a checkpo")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    console = rich_console()
    with pytest.raises(SystemExit) as stop, terminal.user_errors(console):
        runs.atomic_write(path, full)
    assert stop.value.code == 2 and "No space left on device" in console.file.getvalue()
    assert path.read_text() == "the last good checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_run_written_before_a_field_existed_resumes_with_that_fields_old_value():
    now = {"train": {"epochs": 2}, "sparsity": {"density": 0.1, "mask_depthwise": False}}
    before = {"train": {"epochs": 2}, "sparsity": {"density": 0.1}}  # config.json of an older version
    assert runs.config_differences(before, now) == []
    asked = {**now, "sparsity": {"density": 0.1, "mask_depthwise": True}}
    assert runs.config_differences(before, asked) == ["mask_depthwise (run has False, asked for True)"]
