"""What the masks cost in wall-clock time: sparse and dense training steps timed side by side."""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple

import torch
from torch import nn

from models import DATASET_SHAPES, build_model
from rigl import DROP_AND_GROW, Sparsity, SparsityConfig
from rigl_harness.deploy import inference
from rigl_harness.deploy.inference import interleaved


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


# ---------------------------------------------------------------------------------------------
# python rigl.py bench --inference
# ---------------------------------------------------------------------------------------------


def initial_masks(model: nn.Module, density: float, distribution: str) -> dict[str, torch.Tensor]:
    """A static sparse model's masks at d: rigl's initial allocation under `distribution`."""
    config = SparsityConfig(method="static", density=density, distribution=distribution)
    return Sparsity(model, None, config, total_steps=1).masks


def bench_inference(density: float = SparsityConfig.density, threads: int = 1, repeats: int = 5,
                    names: tuple[str, ...] = tuple(MODELS),
                    distributions: tuple[str, ...] = ("erk", "uniform")) -> list[dict]:
    """WRN-22-2 (CIFAR shapes) and ResNet-50 (ImageNet shapes) under each distribution's masks at
    d, at batch 1 and the model's inference batch (MODELS): compare_inference's rows. The
    weights are a fresh initialisation (seed 0): the time of a sparse kernel depends on where the
    zeros are, not on the values."""
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"bench --inference models are {', '.join(MODELS)}, got {unknown[0]!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    entries, batches = [], {}
    for name in names:
        classes, size = DATASET_SHAPES[MODELS[name].dataset]
        for distribution in distributions:
            torch.manual_seed(0)
            model = build_model(name, classes).eval()
            label = f"{name} {distribution}"
            entries.append((label, model, initial_masks(model, density, distribution), size))
            batches[label] = [1, MODELS[name].inference_batch]
    return inference.compare_inference(entries, batches, threads, repeats)


def print_inference(rows: list[dict], repeats: int, console, layers: bool = False) -> None:
    """compare_inference's rows as a rich table (and, with `layers`, each per-layer choice)."""
    from rich.table import Table
    threads = rows[0]["threads"] if rows else "?"
    table = Table("model", "batch", "variant", "ms", "× dense eager", "max rel. diff", "sparse layers",
                  title=f"CPU inference, {threads} thread(s), median of {repeats} interleaved rounds "
                        f"(< 1 is faster than dense eager)")
    for r in rows:
        table.add_row(r["model"], str(r["batch"]), r["variant"], f"{r['ms']:.2f}", f"{r['ratio']:.3f}",
                      f"{r['max_rel_diff']:.1e}", r["sparse_layers"])
    console.print(table)
    for r in rows if layers else []:
        if r["layers"]:
            print_layers(r["layers"], f"{r['model']}, batch {r['batch']}: per-layer choice", console)


def print_layers(layers: list[dict], title: str, console) -> None:
    """sparsify_for_inference's rows as a rich table."""
    from rich.table import Table
    table = Table("layer", "weight", "input", "density", "dense ms", "sparse ms", "kernel", "speedup",
                  "sparse?", title=title)
    for r in layers:
        table.add_row(r["name"], str(r["shape"]), str(r["input"]), f"{r['density']:.3f}",
                      f"{r['dense_ms']:.3f}", "-" if r["sparse_ms"] is None else f"{r['sparse_ms']:.3f}",
                      r["kernel"] or "-", "-" if r["speedup"] is None else f"{r['speedup']:.2f}",
                      "yes" if r["chosen"] else "no")
    console.print(table)
