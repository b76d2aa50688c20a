"""Export (rigl_harness/deploy/export.py): bitmasks, the compact file, ONNX, `python rigl.py export`."""

import io
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console

from helpers import (SMOKE, as_unprivileged, cli, fill, one_line_error, onnx_available, reference_masked,
                     sparse_model, write_run)
from rigl_harness.deploy import export


# --- export.py: bitmasks and the compact file -----------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5, 3, 3), (64, 17)])
def test_pack_bits_round_trip_and_numpy_layout(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    bits = export.pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == (mask.numel() + 7) // 8
    assert torch.equal(export.unpack_bits(bits, mask.shape), mask)
    np.testing.assert_array_equal(bits.numpy(), np.packbits(mask.flatten().numpy(), bitorder="little"))


@pytest.mark.parametrize("name, classes, size", [("wrn-22-2", 10, 32), ("resnet50", 1000, 64)])
def test_compact_round_trip_is_exact(tmp_path, name, classes, size):
    model, masks = sparse_model(name, classes)
    path = tmp_path / "model.compact.pt"
    arch = {"model": name, "num_classes": classes, "width_scale": 1.0, "input_size": size}
    export.save_compact(path, model, masks, arch)
    rebuilt = export.load_compact(path)
    reference = reference_masked(model, masks)
    assert not rebuilt.training
    for key, tensor in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), reference(x))
        assert torch.equal(export.masked_model(model, masks)(x), reference(x))
        assert not torch.equal(model(x), reference(x))  # the masks do matter here


def test_compact_values_are_in_mask_order():
    weight = torch.arange(12.0).view(3, 4)
    mask = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(weight)
    entry = export.compact_state(model, {"weight": mask})["sparse"]["weight"]
    assert entry["values"].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert entry["values"].dtype == torch.float32 and entry["shape"] == [3, 4]
    state, masks = export.expand_state(export.compact_state(model, {"weight": mask}))
    assert torch.equal(state["weight"], weight * mask) and torch.equal(masks["weight"], mask)


def test_fp16_values_are_smaller_and_close(tmp_path):
    model, masks = sparse_model("wrn-10-1", 10)
    arch = {"model": "wrn-10-1", "num_classes": 10, "width_scale": 1.0, "input_size": 32}
    full = export.save_compact(tmp_path / "a.pt", model, masks, arch)
    half = export.save_compact(tmp_path / "b.pt", model, masks, arch, fp16=True)
    assert half < full
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        difference = (export.load_compact(tmp_path / "b.pt")(x) - reference_masked(model, masks)(x)).abs().max()
    assert 0 < difference < 1e-2


def test_size_ratio_wrn_22_2_erk_d01(tmp_path):
    model, masks = sparse_model("wrn-22-2", 10)
    arch = {"model": "wrn-22-2", "num_classes": 10, "width_scale": 1.0, "input_size": 32}
    compact = export.save_compact(tmp_path / "model.compact.pt", model, masks, arch)
    ratio = compact / export.saved_bytes(model.state_dict())
    assert ratio <= 0.16, ratio


def test_load_compact_refuses_other_files(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(export.ExportError, match="is not a compact model file"):
        export.load_compact(tmp_path / "other.pt")


def test_mask_for_unknown_weight_is_refused():
    with pytest.raises(ValueError, match="names no weight of the model"):
        export.compact_state(torch.nn.Linear(2, 2), {"nope.weight": torch.ones(2, 2, dtype=torch.bool)})


# --- export.py: export_run on a run directory, python rigl.py export ------------------------------


def test_export_run_writes_exact_compact_file_and_onnx(tmp_path):
    run = tmp_path / "run"
    model, masks = write_run(run)
    result = export.export_run(run)
    assert result["max_abs_diff"] == 0.0
    assert result["compact_path"] == str(run / export.COMPACT_NAME) and (run / export.COMPACT_NAME).is_file()
    assert result["compact_bytes"] == (run / export.COMPACT_NAME).stat().st_size
    assert result["dense_bytes"] == export.saved_bytes(torch.load(run / "checkpoint.pt")["model"])
    assert result["size_ratio"] == result["compact_bytes"] / result["dense_bytes"] < 0.5
    rebuilt = export.load_compact(run / export.COMPACT_NAME)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), reference_masked(model, masks)(x))
    if onnx_available():
        assert (run / export.ONNX_NAME).is_file() and result["onnx_path"] == str(run / export.ONNX_NAME)
        try:
            import onnxruntime  # noqa: F401
            assert result["onnx_max_abs_diff"] < 1e-4
        except ImportError:
            assert result["onnx_max_abs_diff"] is None
    else:
        assert result["onnx_path"] is None and "pip install onnx" in result["note"]
    console = Console(file=io.StringIO(), width=200)
    export.print_export(result, console)
    assert export.COMPACT_NAME in console.file.getvalue()
    assert result["unfinished"] is not None and "has not finished (no summary.json)" in console.file.getvalue()


def test_export_of_a_finished_run_says_nothing_of_it_and_of_an_unfinished_one_says_so(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert export.export_run(run)["unfinished"] is None
    (run / "summary.json").unlink()
    note = export.export_run(run)["unfinished"]
    assert note.startswith(f"{run} has not finished (no summary.json): exported its last checkpoint, epoch 1")


def test_export_run_fp16(tmp_path):
    write_run(tmp_path / "run")
    full = export.export_run(tmp_path / "run")
    half = export.export_run(tmp_path / "run", fp16=True)
    assert half["compact_bytes"] < full["compact_bytes"] and 0 < half["max_abs_diff"] < 1e-2


@pytest.mark.parametrize("method", ["dense", "small-dense"])
def test_export_of_a_dense_run_is_refused_in_one_line(tmp_path, method):
    write_run(tmp_path / "run", method=method)
    with pytest.raises(ValueError) as error:
        export.export_run(tmp_path / "run")
    message = str(error.value)
    assert "has no masks to export: it trained a dense network" in message and "\n" not in message
    assert isinstance(error.value, export.ExportError)


def test_export_of_a_missing_or_incomplete_run_directory_is_refused_in_one_line(tmp_path):
    for path, detail in [(tmp_path / "absent", "it does not exist"), (tmp_path, "it has no config.json")]:
        with pytest.raises(ValueError, match="is not a run directory: " + detail) as error:
            export.export_run(path)
        assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="it has no checkpoint.pt"):
        export.export_run(tmp_path)
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not a run directory: cannot read") as error:
        export.export_run(tmp_path)
    assert "\n" not in str(error.value)


def test_export_on_a_real_full_disk_keeps_the_previous_model_onnx_and_names_it(small_disk, finished_run):
    if not onnx_available():
        pytest.skip("needs the onnx package")
    run = small_disk("3m") / "run"
    shutil.copytree(finished_run, run)
    assert cli("export", str(run)).returncode == 0
    before = (run / "model.onnx").read_bytes()
    fill(run.parent, leave=(run / "model.compact.pt").stat().st_size + 40_000)  # room for it, not for model.onnx
    one_line_error(cli("export", str(run)), f"cannot write {run / 'model.onnx'}: No space left on device",
                   "the previous model.onnx is kept")
    assert (run / "model.onnx").read_bytes() == before and not list(run.glob("*.tmp"))


def test_export_into_a_folder_the_user_cannot_write_is_one_line(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    prefix = as_unprivileged(run)
    try:
        result = cli("export", str(run), prefix=prefix)
    finally:
        run.chmod(0o755)
    one_line_error(result, f"cannot write {run / 'model.compact.pt'}: Permission denied")


def test_a_run_on_a_small_synthetic_subset_exports(tmp_path):
    """Six images hold classes 0..7 only; the network still has the test set's 10 classes."""
    out = tmp_path / "run"
    trained = cli("train", *SMOKE, "--train-subset", "6", "--val-size", "0", "--batch-size", "6", "--epochs", "1",
                  "--out", str(out))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    result = cli("export", str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
