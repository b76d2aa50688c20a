"""`python rigl.py train --method rigl-struct`: a run of whole-kernel masks (its rule is tested in test_rigl.py)."""

import json

import pytest
import torch

import rigl
from helpers import SMOKE, cli, shapes_of
from models import build_model
from rigl import SparsityConfig


def test_cli_rigl_struct_run_has_density_d_whole_kernels_and_dense_linear(tmp_path):
    out = tmp_path / "struct"
    result = cli("train", *SMOKE, "--method", "rigl-struct", "--distribution", "er", "--epochs", "1",
                 "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert layers["fc.weight"]["density"] == 1.0  # Linear dense, inside the budget
    active, total = sum(r["active"] for r in layers.values()), sum(r["total"] for r in layers.values())
    assert summary["density"] == active / total == pytest.approx(0.1, abs=1e-3)  # d over every masked-by-default weight
    masks = torch.load(out / "checkpoint.pt", weights_only=True)["sparsity"]["masks"]
    allocation = rigl.initial_densities(shapes_of(build_model("wrn-10-1", 10)),
                                        SparsityConfig(method="rigl-struct", distribution="er"))
    assert "conv1.weight" in masks and "fc.weight" not in masks  # the first conv is masked
    for name, mask in masks.items():
        kernels = mask.flatten(2)
        assert torch.equal(kernels.all(dim=-1), kernels.any(dim=-1)), name
        assert int(kernels.any(dim=-1).sum()) == rigl.active_count(allocation[name], mask.shape[0] * mask.shape[1])
        assert layers[name]["active"] == int(mask.sum())
