"""The report's comparisons: which rows it holds against which, each difference of mean test accuracy
with its 95% Welch interval, and a verdict.

Three comparisons stand behind the report's findings (Sundar & Dwaraknath, ReScience C 7(2), 2021,
Sec. 1): RigL against each other sparse method at the same distribution, density and schedule;
RigL trained longer against pruning at the same final density; and each (α, ΔT) of a grid against
the reference point (α = 0.3 and the reference ΔT) at the same density. A difference is RigL's (or
the grid point's) mean minus the other's, over seeds, on last-epoch test accuracy.
"""

from __future__ import annotations

import math
import statistics

from rigl import CHANGES_EVERY_INTERVAL, DROP_AND_GROW, SparsityConfig
from rigl_harness.labels import group_label

CONFIDENCE = 0.95
"""The two-sided confidence of every interval."""
COLUMN_KEYS = ("dataset", "model", "distribution", "density", "lr")
"""What two compared rows share: the task, the distribution, the density and the learning rate."""


def t_density(x: float, df: float) -> float:
    """Student's t density with `df` degrees of freedom."""
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_scale - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(t: float, df: float, intervals: int = 2000) -> float:
    """P(T <= t) for Student's t: 1/2 plus the density integrated from 0 to t (Simpson's rule)."""
    if t < 0:
        return 1 - t_cdf(-t, df, intervals)
    h = t / intervals
    inner = sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, intervals))
    return 0.5 + h / 3 * (t_density(0, df) + inner + t_density(t, df))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0.5 <= p < 1), by bisection: 4.303 for p = 0.975 and df = 2."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def welch(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> dict | None:
    """mean(a) − mean(b) with its Welch interval (unequal variances, Welch–Satterthwaite degrees of
    freedom); None when either side has fewer than two values, which gives no spread to test."""
    if len(a) < 2 or len(b) < 2:
        return None
    return welch_from_moments((statistics.fmean(a), statistics.stdev(a), len(a)),
                              (statistics.fmean(b), statistics.stdev(b), len(b)), confidence)


def welch_from_moments(a: tuple[float, float, int], b: tuple[float, float, int],
                       confidence: float = CONFIDENCE) -> dict:
    """Welch's interval from each side's (mean, sample std, seeds), n >= 2 each: how a published
    "mean ± std over 3 seeds" is held against ours."""
    (mean_a, std_a, n_a), (mean_b, std_b, n_b) = a, b
    difference = mean_a - mean_b
    shares = [std_a ** 2 / n_a, std_b ** 2 / n_b]
    error = math.sqrt(sum(shares))
    if error == 0:  # every seed of both rows gave the same accuracy
        return {"difference": difference, "low": difference, "high": difference, "df": n_a + n_b - 2}
    df = sum(shares) ** 2 / (shares[0] ** 2 / (n_a - 1) + shares[1] ** 2 / (n_b - 1))
    half = t_quantile((1 + confidence) / 2, df) * error
    return {"difference": difference, "low": difference - half, "high": difference + half, "df": df}


def verdict(interval: dict | None, first: str, second: str) -> str:
    """"RigL better", "SET better", "within noise", or why there is no verdict."""
    if interval is None:
        return "no verdict: fewer than two seeds"
    if interval["low"] > 0:
        return f"{first} better"
    if interval["high"] < 0:
        return f"{second} better"
    return "within noise"


def at_reference(group: dict, reference_interval: int) -> bool:
    """A group run at the reference α and ΔT where its method has them."""
    return ((group["method"] not in DROP_AND_GROW or group["drop_fraction"] == SparsityConfig.drop_fraction)
            and (group["method"] not in CHANGES_EVERY_INTERVAL or group["update_interval"] == reference_interval))


def pairs(groups: list[dict], reference_interval: int) -> list[tuple[str, dict, dict]]:
    """(kind, first, second) of every comparison among `groups`, first being RigL's row:
    "methods": RigL against each other masked method at the same schedule; "longer": RigL at a longer
    schedule than pruning's; "hyperparameters": each other (α, ΔT) of RigL against the reference."""
    plain = [g for g in groups if not g.get("origin") and g["method"] not in ("dense", "small-dense")]
    column = {}
    for group in plain:
        column.setdefault(tuple(group[k] for k in COLUMN_KEYS), []).append(group)
    found = []
    for members in column.values():
        references = [g for g in members if g["method"] == "rigl" and at_reference(g, reference_interval)]
        for other in members:
            if other["method"] == "rigl":
                kind = None if at_reference(other, reference_interval) else "hyperparameters"
                found += [(kind, other, r) for r in references if kind and r["multiplier"] == other["multiplier"]]
            elif at_reference(other, reference_interval):
                found += [("methods", r, other) for r in references if r["multiplier"] == other["multiplier"]]
                found += [("longer", r, other) for r in references
                          if other["method"] == "pruning" and r["multiplier"] > other["multiplier"]]
    order = ("methods", "longer", "hyperparameters")
    return sorted(found, key=lambda p: (p[1]["dataset"], p[1]["model"], order.index(p[0]), p[1]["distribution"],
                                        p[1]["density"], group_label(p[1]), group_label(p[2])))


def best_by_validation(groups: list[dict], reference_interval: int) -> set[int]:
    """ids of the RigL groups with the best mean validation accuracy among the (α, ΔT) of their column
    and schedule, where there are several: the grid point the report would pick without the test set."""
    grids: dict[tuple, list[dict]] = {}
    for group in groups:
        if group["method"] == "rigl" and not group.get("origin") and group.get("val_mean") is not None:
            grids.setdefault((*[group[k] for k in COLUMN_KEYS], group["multiplier"]), []).append(group)
    return {id(max(grid, key=lambda g: g["val_mean"])) for grid in grids.values()
            if len(grid) > 1 and any(at_reference(g, reference_interval) for g in grid)}


def compare(groups: list[dict], reference_interval: int = SparsityConfig.update_interval) -> list[dict]:
    """Every comparison among the report's groups (with their per-seed accuracies, "accs"): labels,
    means, seeds, the difference and its interval, and the verdict; "best" marks the grid point
    chosen by validation accuracy."""
    best = best_by_validation(groups, reference_interval)
    rows = []
    for kind, first, second in pairs(groups, reference_interval):
        interval = welch(first["accs"], second["accs"])
        names = [group_label(first), group_label(second)]
        if kind == "hyperparameters":
            names[1] += " (reference, best by validation)" if id(second) in best else " (reference)"
        rows.append({"kind": kind, "dataset": first["dataset"], "model": first["model"],
                     "density": first["density"], "first": names[0], "second": names[1],
                     "first_mean": first["test_mean"], "first_n": first["n"],
                     "second_mean": second["test_mean"], "second_n": second["n"],
                     "difference": first["test_mean"] - second["test_mean"],
                     "low": interval and interval["low"], "high": interval and interval["high"],
                     "verdict": verdict(interval, *names), "best": id(first) in best})
    return rows


def format_interval(row: dict) -> str:
    """"+1.23 [+0.40, +2.06]": the difference and its interval, in accuracy points."""
    if row["low"] is None:
        return f"{row['difference']:+.2f}"
    return f"{row['difference']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"
