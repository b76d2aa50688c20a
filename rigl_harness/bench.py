"""What the masks cost in wall-clock time: sparse and dense training steps timed side by side."""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple, TypeVar

import torch
from torch import nn

from models import DATASET_SHAPES, build_model
from rigl import DROP_AND_GROW, Sparsity, SparsityConfig


class BenchModel(NamedTuple):
    dataset: str
    """The dataset whose input size and classes the model is timed at."""
    train_batch: int
    """The default batch of a timed training step."""
    inference_batch: int
    """The batched size that bench --inference times beside batch 1."""


MODELS = {"wrn-22-2": BenchModel("cifar10", 128, 16), "resnet50": BenchModel("imagenet", 32, 8)}
"""The models that bench times, training and inference."""

TIMED = ("static",) + DROP_AND_GROW
"""The methods a step of which bench times as they train: masks fixed, or dropped and regrown every ΔT."""
UNTIMED = {"small-dense": "its network is narrower, and bench builds the full width",
           "pruning": "its masks shrink on a schedule that a ΔT window does not sample",
           "lottery": "it needs a pruning run's masks, and bench would time a random static mask"}
"""Why bench refuses the other methods (dense is the baseline of every row)."""

T = TypeVar("T")


def interleaved(work: dict[str, Callable[[], T]], repeats: int, warmup: int = 0) -> dict[str, list[T]]:
    """What each entry returns in each of `repeats` rounds. Every entry runs once a round, so
    drifts of a shared machine hit all alike, and each round starts one entry further on, so no
    entry always follows the same one. `warmup` rounds run first and are not kept."""
    for _ in range(warmup):
        for call in work.values():
            call()
    names, results = list(work), {name: [] for name in work}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            results[name].append(work[name]())
    return results


def make_sparsity(model: nn.Module, optimizer: torch.optim.Optimizer, method: str, density: float,
                  update_interval: int) -> Sparsity:
    """The holder under test: masks that change every ΔT steps all through the timed window."""
    config = SparsityConfig(method=method, density=density, update_interval=update_interval, t_end=1.0)
    return Sparsity(model, optimizer, config, total_steps=100 * update_interval)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(name: str, method: str, batch: int, density: float, update_interval: int,
                device: torch.device) -> dict:
    """Mean training step time over a full ΔT window (its one mask update included), the time of
    one mask update alone, and peak CUDA memory, for one model under one method."""
    classes, size = DATASET_SHAPES[MODELS[name].dataset]
    torch.manual_seed(0)
    model = build_model(name, classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sparsity = make_sparsity(model, optimizer, method, density, update_interval)
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
    update = timed(lambda: sparsity.drop_and_grow(alpha), device) if method in DROP_AND_GROW else None
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


def compare(name: str, methods: list[str], batch: int, density: float, update_interval: int, repeats: int,
            device: torch.device) -> list[dict]:
    """Dense and every method timed in turn (interleaved), `repeats` rounds; the median of each
    is reported, with ratios to dense. One mask update is timed alone for drop-and-grow methods."""
    runs = interleaved({m: lambda m=m: time_method(name, m, batch, density, update_interval, device)
                        for m in ["dense"] + methods}, repeats)
    rows, dense_step = [], statistics.median(r["step_s"] for r in runs["dense"])
    for method, results in runs.items():
        update = [r["update_s"] for r in results if r["update_s"] is not None]
        row = {**results[0], "step_s": statistics.median(r["step_s"] for r in results),
               "update_s": statistics.median(update) if update else None,
               "peak_memory_bytes": max((r["peak_memory_bytes"] or 0) for r in results) or None}
        rows.append({**row, "step_ratio": row["step_s"] / dense_step,
                     "update_vs_step": row["update_s"] / dense_step if update else None})
    return rows


def bench_rows(names: list[str], methods: list[str], density: float, update_interval: int,
               batch_size: int, repeats: int, device: torch.device) -> list[dict]:
    """compare() for every model; bad values are refused before anything is timed."""
    for method in methods:
        SparsityConfig(method=method, density=density, update_interval=update_interval)  # clear errors
        if method not in TIMED:
            raise ValueError(f"bench cannot time --methods {method}: {UNTIMED.get(method, 'it is the baseline')}; "
                             f"it times {', '.join(TIMED)}")
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(f"--models takes one or more of {', '.join(MODELS)}, got {', '.join(unknown) or 'none'}")
    if not methods:
        raise ValueError(f"--methods takes one or more of {', '.join(TIMED)}, got none")
    if batch_size < 0 or repeats < 1:
        raise ValueError(f"--batch-size must be >= 0 (0: the model's default) and --repeats >= 1, "
                         f"got {batch_size} and {repeats}")
    return [row for name in names for row in compare(
        name, methods, batch_size or MODELS[name].train_batch, density, update_interval, repeats, device)]


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
