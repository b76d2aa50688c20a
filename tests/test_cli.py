"""The command line (rigl_harness/cli.py): every command answers, and options are documented once."""

import dataclasses

import pytest
from typer.testing import CliRunner

from helpers import cli
from rigl import SparsityConfig
from rigl_harness import cli as command_line
from rigl_harness.options import field_docs
from train import TrainConfig

COMMANDS = [command.name for command in command_line.app.registered_commands]


def test_python_rigl_py_hands_over_to_the_command_line():
    result = cli("--help")
    assert result.returncode == 0 and all(command in result.stdout for command in COMMANDS), result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(command_line.app, [command, "--help"], prog_name="rigl.py")
    assert result.exit_code == 0 and "Usage: rigl.py " + command in result.output, result.output


@pytest.mark.parametrize("config", [TrainConfig, SparsityConfig])
def test_every_configuration_field_is_documented_and_its_docstring_is_the_options_help(config):
    docs = field_docs(config)
    assert set(docs) == {field.name for field in dataclasses.fields(config)}
    assert all(len(doc) > 10 for doc in docs.values())
    shown = CliRunner().invoke(command_line.app, ["train", "--help"], prog_name="rigl.py", terminal_width=80).output
    help_text = " ".join(shown.replace("│", " ").split())
    for field in ("density", "accumulate") if config is SparsityConfig else ("accumulate", "val_size"):
        if field in docs:
            assert " ".join(docs[field].split()[:6]) in help_text, field
