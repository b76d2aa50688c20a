"""Grids of training runs: the cells of a sweep, which are done, and the grid trained."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from rigl import CHANGES_EVERY_INTERVAL, DROP_AND_GROW, UNMASKED, SparsityConfig
from rigl_harness import runs
from rigl_harness.options import configs_from_options
from train import resolve_sparsity, start_run

AXES = {"methods": ("method", str), "densities": ("density", float),
        "distributions": ("distribution", str), "seeds": ("seed", int),
        "multipliers": ("multiplier", float), "drop_fractions": ("drop_fraction", float),
        "update_intervals": ("update_interval", int), "lrs": ("lr", float)}
"""The grid's options: option name -> (configuration field, type of its comma-separated values).
An empty --lrs is the recipe's learning rate."""


def parse_grid(options: dict[str, str]) -> dict[str, list]:
    """Each axis's comma-separated values, typed: {"densities": [0.1, 0.2], ...}."""
    grid = {}
    for axis, (field, kind) in AXES.items():
        if axis == "lrs" and not str(options[axis]).strip():
            grid[axis] = [None]  # the dataset's recipe
            continue
        try:
            grid[axis] = [kind(v) for v in str(options[axis]).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--{axis.replace('_', '-')} takes comma-separated {kind.__name__} "
                             f"values, got {options[axis]!r}") from None
    return grid


def cells(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, one run each. A method ignores what it does not use
    (dense and Small-Dense the distribution, dense the density, static α and ΔT, ...), so cells
    that differ only there are one run; lottery cells follow the pruning cell whose masks they
    retrain."""
    fields = [AXES[axis][0] for axis in grid]
    found, seen = [], set()
    for values in itertools.product(*grid.values()):
        cell = dict(zip(fields, values))
        if cell["method"] in UNMASKED:
            cell["distribution"] = SparsityConfig.distribution
        if cell["method"] == "dense":
            cell["density"] = 1.0
        ignored = {"drop_fraction": SparsityConfig.drop_fraction} if cell["method"] not in DROP_AND_GROW else {}
        if cell["method"] not in CHANGES_EVERY_INTERVAL:
            ignored["update_interval"] = SparsityConfig.update_interval
        key = tuple(sorted({**cell, **ignored}.items()))
        if key not in seen:
            seen.add(key)
            found.append(cell)
    order = {"pruning": 0, "lottery": 2}
    return sorted(found, key=lambda c: order.get(c["method"], 1))


def varied_fields(grid: dict[str, list], found: list[dict]) -> set[str]:
    """The fields a cell's run directory name (runs.run_name) must show: those with several values, and α or ΔT away from the
    configuration's defaults."""
    varied = {AXES[axis][0] for axis, values in grid.items() if len(values) > 1}
    return varied | {f for f in ("drop_fraction", "update_interval")
                     if any(c[f] != getattr(SparsityConfig, f) for c in found)}


def cell_state(out: Path) -> str:
    """done (summary.json), resume (a checkpoint) or new."""
    if (out / "summary.json").exists():
        return "done"
    return "resume" if (out / "checkpoint.pt").exists() else "new"


def cell_configs(options: dict, cell: dict, root: Path, varied: set[str]) -> tuple:
    """One cell's configurations: the train options with the cell's values; a lottery cell
    retrains the masks of the matching pruning cell."""
    cfg, sparse_cfg = configs_from_options({**options, **cell})
    if cell["method"] == "lottery":  # an absolute path: ROOT may be spelled otherwise on resuming
        source = root.resolve() / runs.run_name({**cell, "method": "pruning"}, varied)
        cfg = dataclasses.replace(cfg, masks_from=str(source), init_from=str(source))
    return cfg, sparse_cfg


def run_grid(root: Path, grid: dict, options: dict, dry_run: bool, console) -> None:
    """Every cell's configuration checked first, then the cells trained one after another. A cell
    that another live process holds (its run lock) is skipped, so that several sweeps on one ROOT
    split the grid between them, each cell run once."""
    if "lottery" in grid["methods"] and "pruning" not in grid["methods"]:
        raise ValueError("lottery cells retrain the masks of pruning cells: add pruning to --methods")
    found = cells(grid)
    varied = varied_fields(grid, found)
    configs = [cell_configs(options, cell, root, varied) for cell in found]
    for cell, (cfg, sparse_cfg) in zip(found, configs):  # a cell is done only with the settings asked for
        check_cell(root / runs.run_name(cell, varied), cfg, sparse_cfg)
    skipped = []
    for i, (cell, (cfg, sparse_cfg)) in enumerate(zip(found, configs), 1):
        out = root / runs.run_name(cell, varied)
        state = cell_state(out)
        console.print(f"[{i}/{len(found)}] {out.name}: {state}", highlight=False)
        if dry_run or state == "done":
            continue
        if cfg.masks_from and runs.held_by_another(Path(cfg.masks_from)):  # its worker trains it next
            console.print(f"[{i}/{len(found)}] {out.name}: its pruning run is being trained by another "
                          f"process, skipped", highlight=False)
            skipped.append(out.name)
            continue
        try:
            start_run(cfg, sparse_cfg, out, None, console)  # resume or start: decided under the run's lock
        except runs.RunBusy:
            console.print(f"[{i}/{len(found)}] {out.name}: held by another process, skipped", highlight=False)
            skipped.append(out.name)
    if skipped:
        console.print(f"{len(skipped)} cell(s) were being trained by other processes: report once they finish",
                      highlight=False)


def check_cell(out: Path, cfg, sparse_cfg) -> None:
    """Refuse a cell whose directory holds a run of other settings, naming the fields."""
    saved = runs.read_json(out / "config.json") if (out / "config.json").exists() else None
    differences = runs.config_differences(saved, runs.run_config(cfg, resolve_sparsity(cfg, sparse_cfg))) if saved else []
    if differences:
        raise runs.UsageError(f"{out} holds a run with other settings: {'; '.join(differences)}; "
                              f"sweep into another ROOT")
