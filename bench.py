"""What the masks cost in wall-clock time: sparse and dense training steps timed side by side."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from data import DATASET_SHAPES
from models import build_model

MODELS = {"wrn-22-2": ("cifar10", 128), "resnet50": ("imagenet", 32)}
"""Model -> (dataset whose input shape and classes it is timed at, default batch)."""

MakeSparsity = Callable[[nn.Module, torch.optim.Optimizer, str], object]
"""(model, optimizer, method) -> the sparsity holder under test, with the README's interface:
replaces_optimizer_step(), apply_masks(), drop_and_grow(α), config.drop_fraction."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(name: str, method: str, batch: int, update_interval: int, device: torch.device,
                make_sparsity: MakeSparsity, drops_and_grows: bool) -> dict:
    """Mean training step time over a full ΔT window (its one mask update included), the time of
    one mask update alone, and peak CUDA memory, for one model under one method."""
    classes, size = DATASET_SHAPES[MODELS[name][0]]
    torch.manual_seed(0)
    model = build_model(name, classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sparsity = make_sparsity(model, optimizer, method)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def train_step():
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not sparsity.replaces_optimizer_step():
            optimizer.step()
        sparsity.apply_masks()
    for _ in range(2):  # warm-up: allocator, kernels, momentum buffers
        train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = timed(lambda: [train_step() for _ in range(update_interval)], device) / update_interval
    alpha = sparsity.config.drop_fraction
    update = timed(lambda: sparsity.drop_and_grow(alpha), device) if drops_and_grows else None
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"model": name, "method": method, "batch": batch, "step_s": step, "update_s": update,
            "peak_memory_bytes": memory}


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds that `work` takes, the device's queue drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def compare(name: str, methods: list[str], batch: int, update_interval: int, repeats: int,
            device: torch.device, make_sparsity: MakeSparsity, drop_and_grow: tuple[str, ...]) -> list[dict]:
    """Dense and every method timed in turn, `repeats` rounds, so that drifts of a shared machine
    hit all of them alike; the median of each is reported, with ratios to dense. One mask update
    is timed alone for the methods in `drop_and_grow`."""
    runs = {m: [] for m in ["dense"] + methods}
    for _ in range(repeats):
        for method in runs:
            runs[method].append(time_method(name, method, batch, update_interval, device, make_sparsity,
                                               method in drop_and_grow))
    rows, dense_step = [], statistics.median(r["step_s"] for r in runs["dense"])
    for method, results in runs.items():
        update = [r["update_s"] for r in results if r["update_s"] is not None]
        row = {**results[0], "step_s": statistics.median(r["step_s"] for r in results),
               "update_s": statistics.median(update) if update else None,
               "peak_memory_bytes": max((r["peak_memory_bytes"] or 0) for r in results) or None}
        rows.append({**row, "step_ratio": row["step_s"] / dense_step,
                     "update_vs_step": row["update_s"] / dense_step if update else None})
    return rows


def print_table(rows: list[dict], device: torch.device, update_interval: int, repeats: int, console) -> None:
    from rich.table import Table
    table = Table("model", "method", "batch", "step (ms)", "step ×dense", "one update (ms)",
                  "update / dense step", "peak memory (MiB)",
                  title=f"{device}: steps averaged over ΔT = {update_interval} (one update "
                        f"each), median of {repeats} rounds")
    for r in rows:
        table.add_row(r["model"], r["method"], str(r["batch"]), f"{1000 * r['step_s']:.1f}",
                      f"{r['step_ratio']:.3f}", "-" if r["update_s"] is None else f"{1000 * r['update_s']:.1f}",
                      "-" if r["update_vs_step"] is None else f"{r['update_vs_step']:.2f}",
                      "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:,.0f}")
    console.print(table)
