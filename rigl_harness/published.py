"""The report's published numbers, transcribed once as data (published.csv), and the value each of our rows is held against.

Source: Sundar & Dwaraknath, "[Re] Rigging the Lottery: Making All Tickets Winners", ReScience C 7(2),
2021 (the tables of its PDF), and the values hard-coded in its repository's plotting script
visualization/erk_vs_random_FLOPs.py (github.com/varun19299/rigl-reproducibility) where the tables are
silent. published.csv holds one row per published cell (a cell our copy of the report does not
render legibly is kept, without a value): the item (below), the row in our terms
(dataset, method, distribution, multiplier, density; origin for a restart or a FLOP-matched run;
α and ΔT for Table 4), the mean and std over three seeds (Table 1 gives no std), the training and
test FLOPs ×dense where the report prints them for that cell, and a note where the report
contradicts itself or where our copy of a cell is not legible.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rigl import CHANGES_EVERY_INTERVAL, DROP_AND_GROW, SparsityConfig
from rigl_harness import comparisons

ITEMS = {
    "table1": "Table 1, \"Test accuracy of reference and our implementations on CIFAR-10\" (all 50,000 "
              "training images, no validation split): the report's runs (\"Ours\")",
    "table1-paper": "Table 1: the paper's values (\"Original\"), Evci et al. 2020",
    "table2": "Table 2, \"WideResNet-22-2 on CIFAR10, tabulated for two density (1 − s) values\"",
    "table3": "Table 3, \"Benchmarking sparse ResNet-50s on CIFAR-100\"",
    "table4-reference": "Table 4, \"Reference vs Optimal (α, ΔT) on CIFAR-10\": the reference (α = 0.3, ΔT = 100)",
    "table4-optimal": "Table 4: the optimum TPE found, with its (α, ΔT)",
    "table5": "Table 5, \"Effect of redistribution during RigL updates, evaluated on CIFAR10 and CIFAR100\"",
    "fixed-flops": "Figure 4, \"Test Accuracy vs FLOP consumption\": the values its plotting script "
                   "(visualization/erk_vs_random_FLOPs.py) draws",
}
"""Each item of published.csv: the report's table or figure, by its number and caption."""

PATH = Path(__file__).with_name("published.csv")
NUMBERS = ("multiplier", "density", "mean", "std", "train_flops", "test_flops", "drop_fraction", "update_interval")


def read(path: Path = PATH) -> list[dict]:
    """Every published cell, its numbers as floats (None where the report gives none)."""
    with open(path, newline="", encoding="utf-8") as handle:
        cells = list(csv.DictReader(handle))
    for cell in cells:
        if cell["item"] not in ITEMS:
            raise ValueError(f"{path}: unknown item {cell['item']!r}")
        for key in NUMBERS:
            cell[key] = float(cell[key]) if cell[key] else None
    return cells


def key_of(row: dict) -> tuple:
    """What a published cell and one of our rows must share to be held side by side."""
    return (row["dataset"], row["method"], row["distribution"], float(row["multiplier"]), float(row["density"]),
            row.get("origin") or "")


def items_for(dataset: str, full_training_set: bool) -> tuple[str, ...]:
    """The items a row of ours is compared with, first match first: Table 1 for CIFAR-10 on all
    50,000 images (no validation split), else Table 2 and then Table 5 and the fixed-FLOPs figure
    (CIFAR-10), Table 3 and then Table 5 and the figure (CIFAR-100)."""
    if dataset == "cifar10" and full_training_set:
        return ("table1",)
    return {"cifar10": ("table2", "table5", "fixed-flops"), "cifar100": ("table3", "table5", "fixed-flops")}.get(
        dataset, ())


RESTART_READINGS = ("from RigL-SM's masks", "at RigL-SM's densities")
"""Our rows of Table 5's "RigL restarted with RigL-SM's final distribution", both readings (report's
origin_of): each is held against the table's one published row ("restart" in published.csv)."""


def lookup(group: dict, full_training_set: bool, cells: list[dict] | None = None) -> dict:
    """The published cell of one of our groups ({} if the report has none), and on Table 1 the
    paper's value beside it ("paper")."""
    cells = read() if cells is None else cells
    origin = group.get("origin") or ""
    key = key_of({**group, "origin": "restart" if origin in RESTART_READINGS else origin})
    found = {}
    for item in items_for(group["dataset"], full_training_set):
        match = [c for c in cells if c["item"] == item and key_of(c) == key and c["mean"] is not None]
        if match:
            found = dict(match[0])
            break
    if found.get("item") == "table1":
        paper = [c for c in cells if c["item"] == "table1-paper" and key_of(c) == key]
        found["paper"] = paper[0]["mean"] if paper else None
    return found


def held_against(group: dict, cells: list[dict],
                 reference_interval: int = SparsityConfig.update_interval) -> dict:
    """One of our groups beside its published cell: the report's mean ± std and item, Table 1's
    paper value, and, for a full-length group, ours minus the report's with its Welch interval
    (three seeds on the report's side; over our seeds alone where the report prints no std, as
    Table 1) and a verdict; {} where the report has no such row.
    A row at another α or learning rate than the paper's, or at another ΔT than the reference
    (the paper's 100; a shorter study's own, which stands for it), is not the report's row."""
    if group["method"] in DROP_AND_GROW and group["drop_fraction"] != SparsityConfig.drop_fraction:
        return {}
    if "lr=" in group.get("variant", "") or (group["method"] in CHANGES_EVERY_INTERVAL
                                            and group["update_interval"] != reference_interval):
        return {}
    found = lookup(group, full_training_set=group.get("val_size") == 0, cells=cells)
    if not found:
        return {}
    result = {"published_item": found["item"], "published_mean": found["mean"], "published_std": found["std"],
              "paper_mean": found.get("paper"), "published_note": found["note"]}
    if group["full_length"] and group["n"] > 1:
        # Table 1 prints no std: its value is then taken as exact, and the interval is our seeds' alone
        # (Welch with a zero spread on one side is the one-sample t interval, n − 1 degrees of freedom).
        theirs = 0.0 if found["std"] is None else found["std"]
        interval = comparisons.welch_from_moments((group["test_mean"], group["test_std"], group["n"]),
                                                  (found["mean"], theirs, REPORT_SEEDS))
        result.update(difference=interval["difference"], low=interval["low"], high=interval["high"],
                      verdict="ours higher" if interval["low"] > 0 else "ours lower" if interval["high"] < 0
                      else "within noise")
    return result


REPORT_SEEDS = 3
"""Every published mean ± std is over three seeds (the report, Sec. 4.5)."""
