"""Fixtures shared by the harness's tests: finished runs of `python rigl.py train`, a small disk."""

import contextlib
import os
import subprocess

import pytest
import torch

from helpers import SMOKE, cli

# One thread, here and in every command a test starts: the tests' tensors are small, and on a loaded
# 2-core machine a second thread only waits for the first (a test asserts no timing either way).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished two-epoch run, and what it printed."""
    out = tmp_path_factory.mktemp("runs") / "smoke"
    result = cli("train", *SMOKE, "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished one-epoch run directory."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="session")
def pruning_run(tmp_path_factory):
    """A finished one-epoch gradual-pruning run at d = 0.1: a lottery ticket's source."""
    out = tmp_path_factory.mktemp("pruning") / "run"
    result = cli("train", *SMOKE, "--method", "pruning", "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) mounts a real filesystem of `size` (a tmpfs, e.g. "96k") and returns its
    folder; unmounted after the test. Skipped, with the reason, where it cannot be mounted."""
    mounted = []

    def mount(size: str):
        if os.geteuid() != 0:
            pytest.skip("a real full disk is a small tmpfs, and mounting one needs root")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", str(folder)], check=False)
