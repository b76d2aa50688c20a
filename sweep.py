"""Grids of training runs: the cells of a sweep, their run-directory names, and which are done."""

from __future__ import annotations

import itertools
from pathlib import Path

AXES = {"methods": ("method", str), "densities": ("density", float),
        "distributions": ("distribution", str), "seeds": ("seed", int),
        "multipliers": ("multiplier", float), "drop_fractions": ("drop_fraction", float),
        "update_intervals": ("update_interval", int)}
"""The grid's options: option name -> (configuration field, type of its comma-separated values)."""


def parse_grid(options: dict[str, str]) -> dict[str, list]:
    """Each axis's comma-separated values, typed: {"densities": [0.1, 0.2], ...}."""
    grid = {}
    for axis, (field, kind) in AXES.items():
        try:
            grid[axis] = [kind(v) for v in str(options[axis]).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--{axis.replace('_', '-')} takes comma-separated {kind.__name__} "
                             f"values, got {options[axis]!r}") from None
    return grid


def cells(grid: dict[str, list], facts) -> list[dict]:
    """Every combination of the grid's values, one run each. A method ignores what it does not use
    (`facts`, a report.MethodFacts: dense and Small-Dense the distribution, dense the density,
    static α and ΔT, ...), so cells that differ only there are one run; lottery cells follow the
    pruning cell whose masks they retrain."""
    fields = [AXES[axis][0] for axis in grid]
    found, seen = [], set()
    for values in itertools.product(*grid.values()):
        cell = dict(zip(fields, values))
        if cell["method"] in facts.unmasked:
            cell["distribution"] = "erk"
        if cell["method"] == "dense":
            cell["density"] = 1.0
        ignored = {"drop_fraction": facts.alpha} if cell["method"] not in facts.uses_alpha else {}
        ignored |= {"update_interval": facts.interval} if cell["method"] not in facts.uses_interval else {}
        key = tuple(sorted({**cell, **ignored}.items()))
        if key not in seen:
            seen.add(key)
            found.append(cell)
    order = {"pruning": 0, "lottery": 2}
    return sorted(found, key=lambda c: order.get(c["method"], 1))


def varied_fields(grid: dict[str, list], found: list[dict], defaults: dict) -> set[str]:
    """The fields a cell name must show: those with several values, and α or ΔT away from the
    defaults (`defaults` maps drop_fraction and update_interval to the configuration's)."""
    varied = {AXES[axis][0] for axis, values in grid.items() if len(values) > 1}
    return varied | {f for f in ("drop_fraction", "update_interval")
                     if any(c[f] != defaults[f] for c in found)}


def cell_name(cell: dict, varied: set[str]) -> str:
    """A readable run directory name, e.g. rigl-erk-d0.1-x1.0-s0 (α and ΔT when the sweep varies them)."""
    name = cell["method"] if cell["method"] == "dense" else \
        f"{cell['method']}-{cell['distribution']}-d{cell['density']}"
    name += f"-x{cell['multiplier']}"
    if "drop_fraction" in varied:
        name += f"-a{cell['drop_fraction']}"
    if "update_interval" in varied:
        name += f"-dt{cell['update_interval']}"
    return name + f"-s{cell['seed']}"


def cell_state(out: Path) -> str:
    """done (summary.json), resume (a checkpoint) or new."""
    if (out / "summary.json").exists():
        return "done"
    return "resume" if (out / "checkpoint.pt").exists() else "new"
