"""The command line (rigl_harness/cli.py): every command answers, and options are documented once."""

import dataclasses

import pytest

from helpers import cli
from rigl import SparsityConfig
from rigl_harness.options import field_docs
from train import TrainConfig


@pytest.mark.parametrize("command", ["train", "flops", "sweep", "report", "bench", "export"])
def test_every_command_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0 and "Usage: rigl.py " + command in result.stdout, result.stderr


@pytest.mark.parametrize("config", [TrainConfig, SparsityConfig])
def test_every_configuration_field_is_documented_and_its_docstring_is_the_options_help(config):
    docs = field_docs(config)
    assert set(docs) == {field.name for field in dataclasses.fields(config)}
    assert all(len(doc) > 10 for doc in docs.values())
    help_text = " ".join(cli("train", "--help").stdout.replace("│", " ").split())
    for field in ("density", "accumulate") if config is SparsityConfig else ("accumulate", "val_size"):
        if field in docs:
            assert " ".join(docs[field].split()[:6]) in help_text, field
