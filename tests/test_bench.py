"""`python rigl.py bench` (rigl_harness/bench.py)."""

import json

import pytest
import torch

from helpers import cli, one_line_error, run
from rigl_harness import bench


# --- `python rigl.py bench` ---------------------------------------------


def test_bench_command_times_dense_and_sparse_side_by_side():
    result = cli("bench", "--models", "wrn-22-2", "--methods", "rigl,static", "--batch-size", "2",
                 "--update-interval", "2", "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["method"] for r in rows] == ["dense", "rigl", "static"]
    assert rows[0]["step_ratio"] == 1.0 and all(r["step_s"] > 0 for r in rows)
    assert rows[1]["update_s"] > 0 and rows[2]["update_s"] is None  # static never updates
    assert run("bench", "--models", "vgg", "--json").returncode == 2


@pytest.mark.parametrize("args, message", [(["--batch-size", "-1"], "--batch-size must be >= 0"),
                                           (["--repeats", "0"], "--repeats >= 1, got 0 and 0"),
                                           (["--models", "vgg"], "--models takes one or more of wrn-22-2"),
                                           (["--methods", ""], "--methods takes one or more of")])
def test_bad_bench_values_get_one_line(args, message):
    one_line_error(run("bench", "--models", "wrn-22-2", *args), message)


@pytest.mark.parametrize("method, why", [("small-dense", "bench builds the full width"),
                                         ("lottery", "a random static mask"), ("pruning", "shrink on a schedule"),
                                         ("dense", "it is the baseline")])
def test_bench_refuses_the_methods_it_cannot_time_honestly(method, why):
    with pytest.raises(ValueError, match=f"bench cannot time --methods {method}: .*{why}"):
        bench.bench_rows(["wrn-22-2"], ["rigl", method], 0.1, 2, 2, 1, torch.device("cpu"))
    result = cli("bench", "--models", "wrn-22-2", "--methods", method, "--repeats", "1", "--batch-size", "2")
    one_line_error(result, f"bench cannot time --methods {method}")


def test_interleaved_runs_every_entry_once_a_round_starting_one_further_on():
    """The one timing scheme of bench and bench --inference: drifts of a shared machine hit every
    entry alike, and no entry always follows the same one."""
    order = []
    results = bench.interleaved({name: lambda name=name: order.append(name) or len(order) for name in "abc"},
                                repeats=3, warmup=1)
    assert order == list("abc" "abc" "bca" "cab")  # the warm-up round, then three rotated rounds
    assert results == {"a": [4, 9, 11], "b": [5, 7, 12], "c": [6, 8, 10]}
