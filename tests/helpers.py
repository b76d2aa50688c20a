"""Helpers shared by the harness's tests: the command line, run directories, sparse models."""

import copy
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import models
import rigl
from rigl_harness import cli as command_line
from rigl_harness.deploy import export
from test_rigl import sgd, shapes_of, small_net, train_steps  # noqa: F401  (the algorithm tests' helpers)
import train
from train import TrainConfig

REPO = pathlib.Path(__file__).parent.parent

SMOKE = ["--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
         "--test-subset", "256", "--batch-size", "64", "--update-interval", "4"]
"""A small, fast `train` on synthetic data."""


def build_run(cfg, sparse_cfg) -> train.Run:
    """A run built as start_run builds it: the SparsityConfig asked for resolved once, then built."""
    return train.build_run(cfg, train.resolve_sparsity(cfg, sparse_cfg))


def run_config(cfg, sparse_cfg) -> dict:
    """config.json of a run asked for with these configurations, as start_run writes it."""
    return train.run_config(cfg, sparse_cfg, train.resolve_sparsity(cfg, sparse_cfg))


def straight_and_resumed(cfg, sparse_cfg, root, monkeypatch) -> tuple[dict, dict]:
    """The summaries of a run trained straight into ROOT/straight and of the same run stopped after
    its first epoch (as Ctrl-C would) and resumed, in ROOT/stopped."""
    straight = train.start_run(cfg, sparse_cfg, root / "straight", resume=False, console=rich_console())
    end_epoch = train.end_epoch

    def stop_after_the_first(run, *args):
        end_epoch(run, *args)
        if run.epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "end_epoch", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train.start_run(cfg, sparse_cfg, root / "stopped", resume=False, console=rich_console())
    monkeypatch.setattr(train, "end_epoch", end_epoch)
    return straight, train.start_run(cfg, sparse_cfg, root / "stopped", resume=True, console=rich_console())


def cli(*args, timeout=300, prefix=()):
    """`python rigl.py ARGS` in the repository (after `prefix`, e.g. as_unprivileged's)."""
    return subprocess.run([*prefix, sys.executable, "rigl.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def run(*args) -> subprocess.CompletedProcess:
    """`python rigl.py ARGS` in this process, as `cli` returns it but without starting Python and
    torch again: for a command that stops early (a refused option). An exception that the command
    did not turn into an exit code fails the test, as a traceback would."""
    result = CliRunner().invoke(command_line.app, [str(a) for a in args], prog_name="rigl.py")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["rigl.py", *args], result.exit_code, result.stdout, result.stderr)


def one_line_error(result, *words) -> str:
    """Assert that a command stopped with exit code 2 and one line holding `words`, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    message = " ".join(result.stdout.split())
    assert "error:" in message and all(word in message for word in words), message
    return message


def fill(disk: pathlib.Path, leave: int) -> None:
    """Fill a filesystem until only `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def as_unprivileged(folder: pathlib.Path) -> list[str]:
    """Make `folder` read-only to its owner, and the command prefix that runs a command as a user
    who may not write it: root writes anywhere, so as root it is run without the capabilities
    that override permissions (setpriv). Skips the test where neither can be had."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("an unwritable folder for root needs setpriv to drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all"]


def rich_console() -> Console:
    """A console that prints into a string (console.file.getvalue())."""
    return Console(file=io.StringIO())


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_first_epoch(process, out, timeout=300):
    """Return once `out` holds a finished epoch, failing if the process ends first."""
    deadline = time.time() + timeout
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.05)


def sparse_model(name: str, classes: int, distribution: str = "erk", density: float = 0.1, seed: int = 0):
    """A model, rigl's masks for it, and weights re-randomised afterwards so that the entries
    outside the masks are NOT zero (the exporter must apply the masks itself); BatchNorm
    statistics and biases made non-trivial too."""
    torch.manual_seed(seed)
    model = models.build_model(name, classes)
    config = rigl.SparsityConfig(method="static", density=density, distribution=distribution)
    masks = rigl.Sparsity(model, None, config, 10).masks
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0, 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(0, 0.1)
    return model.eval(), masks


def reference_masked(model, masks):
    """The masked network computed independently of export.masked_model."""
    reference = copy.deepcopy(model).eval()
    parameters = dict(reference.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)
    return reference


def write_run(root, method: str = "rigl", model_name: str = "wrn-10-1", dataset: str = "synthetic"):
    """A run directory as train.start_run and runs.save_epoch write it (only the keys export reads
    beside the structure): config.json and checkpoint.pt."""
    classes = {"synthetic": 10, "cifar10": 10}[dataset]
    torch.manual_seed(0)
    model = models.build_model(model_name, classes)
    sparsity = rigl.Sparsity(model, None, rigl.SparsityConfig(method=method, density=0.1), 10)
    config = {"train": asdict(TrainConfig(model=model_name, dataset=dataset)),
              "sparsity": asdict(sparsity.config), "torch": torch.__version__, "git_commit": None}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    torch.save({"model": model.state_dict(), "sparsity": sparsity.state_dict(), "epoch": 1}, root / "checkpoint.pt")
    return model, sparsity.masks


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_available() -> bool:
    return export.onnx_missing() is None
