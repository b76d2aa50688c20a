"""Sparse for real: a run's masked weights as a compact lossless file and as ONNX.

Training keeps every weight dense and multiplies it by a mask, so a 90%-sparse network is stored
like a dense one. `export_run` turns a run directory into

    RUN_DIR/model.compact.pt   every masked weight as a packed bitmask (1 bit per entry) and the
                               fp32 values of its active entries in row-major mask order; every
                               other entry of the state dict (dense layers, BatchNorm) as is;
                               the model name, classes and width to rebuild it (models.py)
    RUN_DIR/model.onnx         the same network for ONNX runtimes, with dense weight tensors (ONNX
                               Conv and Gemm take dense weights), or with `onnx_sparse` the masked
                               ones as sparse initializers, which ONNX Runtime densifies on loading

and checks that the network rebuilt from the compact file computes exactly what the masked one
does. The compact file is torch.save of plain tensors, strings and numbers, so it loads with
torch.load(weights_only=True):

    {"format": "rigl-compact", "version": 1,
     "architecture": {"model": "wrn-22-2", "num_classes": 10, "width_scale": 1.0, "input_size": 32},
     "sparse": {name: {"shape": [...], "bits": uint8 tensor, "values": fp32 (or fp16) tensor}},
     "dense": {name: tensor}}

At density d a masked fp32 weight costs 1 + 32·d bits per entry instead of 32 (0.13× at d = 0.1);
BatchNorm, dense layers and the per-tensor overhead of torch.save come on top.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

import models
from rigl_harness import runs

FORMAT, VERSION = "rigl-compact", 1
COMPACT_NAME, ONNX_NAME = "model.compact.pt", "model.onnx"
"""The files export_run writes into the run directory."""
CHECK_BATCH, CHECK_SEED = 2, 0
"""The fixed random input batch on which the rebuilt network is compared with the masked one."""


class ExportError(runs.UsageError):
    """A run directory or file that cannot be exported or loaded; the message is one line."""


# ---------------------------------------------------------------------------------------------
# Bitmasks: 8 mask entries to a byte, the bit order of numpy.packbits(bitorder="little")
# ---------------------------------------------------------------------------------------------

_BIT_WEIGHTS = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
"""Entry i of a group of 8 sets bit i (least significant first), as numpy's bitorder="little"."""


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, its row-major entries 8 to a byte, the last byte zero-padded."""
    flat = mask.detach().flatten().to(device="cpu", dtype=torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: torch.Size | list[int]) -> torch.Tensor:
    """The inverse of pack_bits: the bool tensor of `shape`."""
    flat = (bits.view(-1, 1) & _BIT_WEIGHTS).ne(0).flatten()
    return flat[:math.prod(shape)].view(*shape)


# ---------------------------------------------------------------------------------------------
# The compact state and file
# ---------------------------------------------------------------------------------------------


def masked_model(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` in eval mode whose masked weights are exactly 0 where their mask is off."""
    check_masks(model.state_dict(), masks)
    model = copy.deepcopy(model).eval()
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = parameters[name]
            weight.copy_(torch.where(mask.to(weight.device), weight, torch.zeros((), dtype=weight.dtype)))
    return model


def check_masks(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Every mask names a floating-point tensor of the state dict with its shape."""
    for name, mask in masks.items():
        if name not in state:
            raise ExportError(f"mask {name} names no weight of the model")
        if tuple(mask.shape) != tuple(state[name].shape) or not state[name].is_floating_point():
            raise ExportError(f"mask {name} has shape {tuple(mask.shape)}, "
                              f"the weight {tuple(state[name].shape)} ({state[name].dtype})")


def compact_state(model: nn.Module, masks: dict[str, torch.Tensor], fp16: bool = False) -> dict:
    """Every masked weight as {"shape", "bits", "values"}: its packed mask and the values of its
    active entries in row-major order (fp32, or fp16 if asked: lossy); the rest of the state dict
    as is, under "dense"."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    check_masks(state, masks)
    sparse = {}
    for name, mask in masks.items():
        active = mask.detach().cpu().to(torch.bool).flatten()
        values = state[name].flatten()[active].to(torch.float16 if fp16 else torch.float32)
        sparse[name] = {"shape": list(mask.shape), "bits": pack_bits(active), "values": values}
    dense = {name: tensor.clone() for name, tensor in state.items() if name not in masks}
    return {"sparse": sparse, "dense": dense}


def expand_state(compact: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse of compact_state: the dense fp32 state dict (0 where a mask is off) and the masks."""
    state, masks = dict(compact["dense"]), {}
    for name, entry in compact["sparse"].items():
        mask = unpack_bits(entry["bits"], entry["shape"])
        weight = torch.zeros(mask.numel(), dtype=torch.float32)
        weight[mask.flatten()] = entry["values"].to(torch.float32)
        state[name], masks[name] = weight.view(mask.shape), mask
    return state, masks


def save_compact(path: Path | str, model: nn.Module, masks: dict[str, torch.Tensor],
                 architecture: dict, fp16: bool = False) -> int:
    """Write the compact file of `model` under `masks`; `architecture` holds build_model's
    arguments (model, num_classes, width_scale) and the input size. Returns its size in bytes."""
    missing = {"model", "num_classes", "width_scale"} - set(architecture)
    if missing:
        raise ExportError(f"the architecture needs {', '.join(sorted(missing))} to be rebuilt")
    payload = {"format": FORMAT, "version": VERSION, "architecture": dict(architecture),
               **compact_state(model, masks, fp16)}
    runs.atomic_write(Path(path), lambda handle: torch.save(payload, handle))
    return Path(path).stat().st_size


def read_compact(path: Path | str) -> dict:
    """The contents of a compact file, checked to be one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ExportError(f"{path} cannot be read as a compact model file: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ExportError(f"{path} is not a compact model file (export.py writes {COMPACT_NAME})")
    if payload.get("version") != VERSION:
        raise ExportError(f"{path} is a compact file of version {payload.get('version')}; "
                          f"this code reads version {VERSION}")
    return payload


def load_compact(path: Path | str) -> nn.Module:
    """The network of a compact file as an ordinary nn.Module in eval mode (models.build_model)."""
    payload = read_compact(path)
    arch = payload["architecture"]
    model = models.build_model(arch["model"], arch["num_classes"], arch["width_scale"])
    state, _ = expand_state(payload)
    model.load_state_dict(state)
    return model.eval()


def saved_bytes(value) -> int:
    """The size of torch.save(value), measured in memory."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getbuffer().nbytes


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path | str, sparse: bool = False) -> None:
    """torch.onnx.export with a dynamic batch axis, into memory, then written atomically
    (runs.atomic_write); `sparse` stores the sparse weights as sparse initializers. The TorchScript
    exporter (dynamo=False) needs only the `onnx` package; the default torch.export-based one also
    needs `onnxscript` (docs.pytorch.org/docs/stable/onnx.html). Its deprecation warning is silenced."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"},
                                                                 "logits": {0: "batch"}})
    data = sparse_initializers(buffer.getvalue()) if sparse else buffer.getvalue()
    runs.atomic_write(Path(path), lambda handle: handle.write(data))


def sparse_initializers(data: bytes) -> bytes:
    """An ONNX model in which every weight with more than 2/3 zeros is a sparse_initializer
    (values and int64 linear indices, ONNX's SparseTensorProto): 12 bytes an active entry instead
    of 4 an entry. ONNX Runtime densifies them when it loads the model; onnx.checker accepts the
    file, but its full shape-inference check and runtimes without sparse-initializer support may
    not."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load_from_string(data)
    dense, sparse = [], []
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        flat = array.reshape(-1)
        active = np.flatnonzero(flat)
        if array.dtype != np.float32 or 12 * active.size >= 4 * flat.size:
            dense.append(initializer)
            continue
        sparse.append(helper.make_sparse_tensor(numpy_helper.from_array(flat[active], initializer.name),
                                                numpy_helper.from_array(active.astype(np.int64)),
                                                list(array.shape)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(dense)
    model.graph.sparse_initializer.extend(sparse)
    return model.SerializeToString()


def onnx_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session of `path`, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # Idle ORT workers otherwise spin after a run and take the cores from whatever runs next
        # (here: the torch variants timed in the same rounds); ONNX Runtime's threading docs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_max_abs_diff(path: Path | str, model: nn.Module, example: torch.Tensor) -> float | None:
    """max |ONNX Runtime - torch| on `example`; None when onnxruntime is not installed."""
    session = onnx_session(path)
    if session is None:
        return None
    (logits,) = session.run(["logits"], {"images": example.numpy()})
    with torch.no_grad():
        return float((torch.from_numpy(logits) - model(example)).abs().max())


def onnx_missing() -> str | None:
    """Why ONNX export cannot run here, or None when it can."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export imports it)
    except ImportError:
        return "ONNX export skipped: torch.onnx.export needs the onnx package (pip install onnx)"
    return None


# ---------------------------------------------------------------------------------------------
# A run directory
# ---------------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """config.json and checkpoint.pt of a run directory, or a one-line ExportError."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a run directory: it does not exist")
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir} is not a run directory: it has no {name}")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        train, method = config["train"], config["sparsity"]["method"]
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        masks = checkpoint["sparsity"]["masks"]
        _ = train["model"], train["dataset"], checkpoint["model"]
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ExportError(f"{run_dir} is not a run directory: cannot read its config.json and "
                          f"checkpoint.pt ({type(error).__name__}: {error})") from None
    if not masks:
        raise ExportError(f"{run_dir} has no masks to export: it trained a dense network "
                          f"(method {method})")
    return config, checkpoint


def state_mismatch(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """How a saved state dict differs from a model's, in one line (load_state_dict's own message
    takes a line a tensor); None when it fits."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [k for k in expected if k in saved and saved[k].shape != expected[k].shape]
    problems = [f"{len(names)} {what} (first {names[0]})" for names, what in
                [(missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")] if names]
    return "; ".join(problems) or None


def run_network(run_dir: Path, config: dict, checkpoint: dict) -> tuple[nn.Module, dict, dict]:
    """The run's trained network with its masks applied, its masks, and its architecture. Runs
    with masks are never Small-Dense (refused by read_run), so their width scale is 1."""
    classes, size = models.DATASET_SHAPES[config["train"]["dataset"]]
    architecture = {"model": config["train"]["model"], "num_classes": classes, "width_scale": 1.0,
                    "input_size": size}
    model = models.build_model(architecture["model"], classes, architecture["width_scale"])
    mismatch = state_mismatch(model.state_dict(), checkpoint["model"])
    if mismatch:
        raise ExportError(f"{run_dir}: checkpoint.pt does not fit {architecture['model']} of "
                          f"config.json: {mismatch}")
    model.load_state_dict(checkpoint["model"])
    masks = {name: mask.to(torch.bool) for name, mask in checkpoint["sparsity"]["masks"].items()}
    return masked_model(model, masks), masks, architecture


def export_run(run_dir: Path | str, fp16: bool = False, onnx_sparse: bool = False) -> dict:
    """Write RUN_DIR/model.compact.pt and RUN_DIR/model.onnx, and measure them: the bytes of the
    dense state dict and of the compact file, and how far the rebuilt network (and ONNX Runtime,
    when installed) is from the masked one on a fixed random batch (exactly 0 in fp32).
    `onnx_sparse` stores the masked weights of model.onnx as sparse initializers (smaller file,
    fewer runtimes read it; see sparse_initializers)."""
    run_dir = Path(run_dir)
    config, checkpoint = read_run(run_dir)
    model, masks, architecture = run_network(run_dir, config, checkpoint)
    compact_path, onnx_path = run_dir / COMPACT_NAME, run_dir / ONNX_NAME
    dense_bytes, compact_bytes = saved_bytes(checkpoint["model"]), save_compact(
        compact_path, model, masks, architecture, fp16)
    rebuilt = load_compact(compact_path)
    size = architecture["input_size"]
    example = torch.randn(CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(CHECK_SEED))
    with torch.no_grad():
        max_abs_diff = float((model(example) - rebuilt(example)).abs().max())
    skipped = onnx_missing()
    if skipped is None:
        export_onnx(rebuilt, example, onnx_path, sparse=onnx_sparse)
    unfinished = None if (run_dir / "summary.json").is_file() else (
        f"{run_dir} has not finished (no summary.json): exported its last checkpoint, epoch "
        f"{checkpoint.get('epoch')}, step {checkpoint.get('step')}; finish it with train --resume for its final masks")
    return {"run_dir": str(run_dir), "model": architecture["model"], "fp16": fp16, "onnx_sparse": onnx_sparse,
            "unfinished": unfinished,
            "dense_bytes": dense_bytes, "compact_bytes": compact_bytes,
            "size_ratio": compact_bytes / dense_bytes, "max_abs_diff": max_abs_diff,
            "onnx_max_abs_diff": None if skipped else onnx_max_abs_diff(onnx_path, rebuilt, example),
            "compact_path": str(compact_path), "onnx_path": None if skipped else str(onnx_path),
            "onnx_bytes": None if skipped else onnx_path.stat().st_size, "note": skipped}


def print_export(result: dict, console) -> None:
    """What export_run wrote and measured, as a rich table."""
    from rich.table import Table
    table = Table("file", "bytes", "× dense state dict", "max |Δ| of the logits",
                  title=f"{result['run_dir']}: {result['model']}, values in "
                        f"{'fp16 (lossy)' if result['fp16'] else 'fp32 (lossless)'}"
                        f"{', ONNX with sparse initializers' if result['onnx_sparse'] else ''}")
    table.add_row("dense state dict (torch.save)", f"{result['dense_bytes']:,}", "1.000", "-")
    table.add_row(result["compact_path"], f"{result['compact_bytes']:,}", f"{result['size_ratio']:.3f}",
                  f"{result['max_abs_diff']:.3g} (vs the masked network)")
    if result["onnx_path"]:
        diff = result["onnx_max_abs_diff"]
        table.add_row(result["onnx_path"], f"{result['onnx_bytes']:,}",
                      f"{result['onnx_bytes'] / result['dense_bytes']:.3f}",
                      "onnxruntime not installed" if diff is None else f"{diff:.3g} (ONNX Runtime vs torch)")
    console.print(table)
    for note in (result["unfinished"], result["note"]):
        if note:
            console.print(note, highlight=False, soft_wrap=True)
