"""How the report names, groups and orders runs: its words for methods and distributions, its rows."""

from __future__ import annotations

from typing import get_args

from flops import NO_DISTRIBUTION
from rigl import Method

SPELLING = {"rigl": "RigL", "set": "SET", "snfs": "SNFS", "sg": "SG", "sm": "SM", "struct": "struct"}
"""The words of method names that the report does not write capitalised: "rigl-sg" -> "RigL-SG"."""
DISTRIBUTION_SUFFIX = {NO_DISTRIBUTION: "", "uniform": "", "er": " (ER)", "erk": " (ERK)"}
"""The report leaves uniform unmarked and writes "(ERK)" after the method (Table 2)."""


def method_name(method: str) -> str:
    """How the report writes a method: "Small-Dense", "RigL-SG"."""
    return "-".join(SPELLING.get(word, word.capitalize()) for word in method.split("-"))


GROUP_KEYS = ("dataset", "model", "method", "distribution", "multiplier", "drop_fraction",
              "update_interval", "lr", "origin", "density")
"""A group is every run with the same configuration but the seed."""
ROW_KEYS = GROUP_KEYS[:-1]
"""A table row is a group without its density: the densities are the columns."""


def several_tasks(groups: list[dict]) -> bool:
    """True when the groups mix datasets or models: labels then have to name them."""
    return len({(g["dataset"], g["model"]) for g in groups}) > 1


def group_label(group: dict, with_task: bool = False) -> str:
    """The report's name of a row: "RigL 2× (ERK)", plus α and ΔT when they are not the paper's."""
    label = method_name(group["method"])
    if group["multiplier"] != 1:
        label += f" {group['multiplier']:g}×"
    label += DISTRIBUTION_SUFFIX.get(group["distribution"], f" ({group['distribution']})")
    label += group["variant"] + (f" {group['origin']}" if group.get("origin") else "")
    return f"{group['dataset']} {group['model']}: {label}" if with_task else label


def row_order(row_key: tuple) -> tuple:
    """Table order: task, then 1× before 2×, unmasked and uniform before ER and ERK, then method."""
    row = dict(zip(ROW_KEYS, row_key))
    methods, distributions = get_args(Method), list(DISTRIBUTION_SUFFIX)
    return (row["dataset"], row["model"], row["multiplier"],
            distributions.index(row["distribution"]) if row["distribution"] in distributions else 99,
            methods.index(row["method"]) if row["method"] in methods else 99,
            row["method"], row["drop_fraction"], row["update_interval"], row["lr"], row["origin"])


def format_ratio(ratio: float | None) -> str:
    """A FLOP ratio as the report writes it: "0.35×"; "n/a" when none was recorded."""
    return "n/a" if ratio is None else f"{ratio:.2f}×"
