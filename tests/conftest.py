"""Fixtures shared by the harness's tests: finished runs of `python rigl.py train`."""

import pytest

from helpers import SMOKE, cli


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
