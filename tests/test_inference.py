"""Sparse CPU inference (rigl_harness/deploy/inference.py) and `bench --inference`."""

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from helpers import cli, onnx_available, onnxruntime_available, reference_masked, sparse_model, write_run
from rigl_harness import bench
from rigl_harness.deploy import export, inference


# --- inference.py: sparse kernels where they pay -------------------------------------------


@pytest.mark.parametrize("name, classes, size", [("wrn-22-2", 10, 32), ("resnet50", 1000, 64)])
def test_every_sparse_kernel_matches_the_masked_layer(name, classes, size):
    model, masks = sparse_model(name, classes, "uniform")  # uniform: the classifier is masked too
    dense = reference_masked(model, masks)
    names = [n.removesuffix(".weight") for n in masks]
    shapes = inference.layer_inputs(dense, names, torch.zeros(2, 3, size, size))
    kernels = set()
    with torch.no_grad():
        for layer in names:
            module = dense.get_submodule(layer)
            for batch in (1, 2):
                x = torch.randn(batch, *shapes[layer][1:])
                for kernel, sparse in inference.sparse_candidates(module).items():
                    difference = inference.relative_difference(sparse(x), module(x))
                    assert difference <= 1e-5, (layer, kernel, batch, difference)
                    kernels.add(kernel)
    assert kernels == {"unfold", "kn2row", "1x1", "csr"}


@pytest.mark.parametrize("batch", [1, 3])
def test_sparsified_model_equals_masked_dense(batch):
    model, masks = sparse_model("wrn-22-2", 10, "uniform")
    x = torch.randn(batch, 3, 32, 32)
    sparse, rows = inference.sparsify_for_inference(model, masks, x, threads=1, repeats=1,
                                                           min_speedup=0.0)
    assert all(r["chosen"] for r in rows) and len(rows) == len(masks)
    assert {type(m).__name__ for m in sparse.modules()} >= {"SparseConv2d", "SparseLinear"}
    y = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        assert inference.relative_difference(sparse(y), reference_masked(model, masks)(y)) <= 1e-5
    assert set(rows[0]) >= {"name", "shape", "density", "dense_ms", "sparse_ms", "speedup", "chosen"}


def test_sparsify_keeps_dense_layers_where_sparse_is_slower():
    model, masks = sparse_model("wrn-10-1", 10)
    x = torch.randn(1, 3, 32, 32)
    sparse, rows = inference.sparsify_for_inference(model, masks, x, repeats=1, min_speedup=1e9)
    assert not any(r["chosen"] for r in rows)
    assert not any(isinstance(m, (inference.SparseConv2d, inference.SparseLinear))
                   for m in sparse.modules())


@pytest.mark.parametrize("whole_network_wins", [False, True])
def test_layers_that_win_alone_are_kept_only_if_the_network_wins_too(monkeypatch, whole_network_wins):
    """Timings are faked: every sparse kernel wins its layer by 10×; the whole sparse network then
    wins or loses. Losing as a whole returns the dense network with no layer chosen."""
    def fake_median_ms(work, repeats, warmup=2):
        if "dense network" in work:
            return {"dense network": 10.0, "sparse network": 5.0 if whole_network_wins else 12.0}
        return {name: 10.0 if name == "dense" else 1.0 for name in work}
    monkeypatch.setattr(inference, "median_ms", fake_median_ms)
    model, masks = sparse_model("wrn-10-1", 10)
    sparse, rows = inference.sparsify_for_inference(model, masks, torch.randn(1, 3, 32, 32), repeats=1)
    swapped = [m for m in sparse.modules() if isinstance(m, (inference.SparseConv2d, inference.SparseLinear))]
    assert all(r["chosen"] == whole_network_wins for r in rows)
    assert len(swapped) == (len(rows) if whole_network_wins else 0)
    [row] = [r for r in inference.compare_inference([("wrn-10-1", model, masks, 32)], [1], repeats=1)
             if r["variant"] == "per-layer sparse"]
    assert row["sparse_layers"] == (f"{len(rows)}/{len(rows)}" if whole_network_wins else
                                    f"0/{len(rows)} ({len(rows)} faster alone, not as a network)")


def test_compare_inference_rows_and_table():
    model, masks = sparse_model("wrn-10-1", 10)
    rows = inference.compare_inference([("wrn-10-1 erk", model, masks, 32)], [1], threads=1, repeats=1)
    variants = [r["variant"] for r in rows]
    assert variants[:3] == ["dense eager", "channels_last", "per-layer sparse"]
    assert ("onnxruntime" in variants) == (onnx_available() and onnxruntime_available())
    assert rows[0]["ratio"] == 1.0 and all(r["max_rel_diff"] <= 1e-5 for r in rows)
    console = Console(file=io.StringIO(), width=200)
    bench.print_inference(rows, 1, console, layers=True)
    assert "per-layer sparse" in console.file.getvalue() and "group1.0.conv1" in console.file.getvalue()


def test_bench_inference_times_rigls_initial_masks_at_the_density(monkeypatch):
    """bench --inference times each model under rigl's initial masks at d, at batch 1 and the
    model's inference batch."""
    timed = {}

    def fake_compare(entries, batches, threads, repeats):
        for label, model, masks, size in entries:
            active = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
            timed[label] = (round(active, 3), batches[label], size)
        return []
    monkeypatch.setattr(inference, "compare_inference", fake_compare)
    bench.bench_inference(0.2, names=("wrn-22-2",), distributions=("uniform",))
    assert timed == {"wrn-22-2 uniform": (0.2, [1, 16], 32)}


def test_onnx_with_sparse_initializers_is_smaller_and_equal(tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    write_run(tmp_path / "run", model_name="wrn-16-2")
    dense = export.export_run(tmp_path / "run")
    sparse = export.export_run(tmp_path / "run", onnx_sparse=True)
    assert sparse["onnx_bytes"] < 0.5 * dense["onnx_bytes"] and sparse["onnx_max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(sparse["onnx_path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = export.load_compact(sparse["compact_path"])(x)
    assert np.abs(session.run(["logits"], {"images": x.numpy()})[0] - expected.numpy()).max() < 1e-4


def test_bench_inference_refuses_unknown_models_and_threads():
    with pytest.raises(ValueError, match="bench --inference models are wrn-22-2, resnet50, got 'vgg'"):
        bench.bench_inference(names=("vgg",))
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        bench.bench_inference(threads=0)


def test_export_of_a_checkpoint_that_does_not_fit_its_config_is_refused_in_one_line(tmp_path):
    write_run(tmp_path / "run", model_name="wrn-10-1")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["train"]["model"] = "wrn-16-1"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit wrn-16-1 of config.json: .* missing") as error:
        export.export_run(tmp_path / "run")
    assert "\n" not in str(error.value)


def test_export_command_json(finished_run, tmp_path):
    import shutil
    shutil.copytree(finished_run, tmp_path / "run")
    result = cli("export", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] == 0.0 and report["size_ratio"] < 0.2
    missing = cli("export", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "is not a run directory" in missing.stdout
