"""Table 4 of the report from the studies of `tune`: the reference (α = 0.3, ΔT = 100) against the best trial, with figures."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from rigl_harness import comparisons, figures, labels, published, report, runs

COLUMNS = ("method", "distribution", "density", "trials", "reference_val_mean", "reference_val_std",
           "reference_test_mean", "reference_test_std", "best_trial", "best_drop_fraction",
           "best_update_interval", "best_val_mean", "best_val_std", "best_test_mean", "best_test_std", "seeds",
           "difference", "low", "high", "verdict", "published_reference", "published_optimum",
           "published_alpha", "published_interval")
"""ROOT/tune.csv: one row per study, accuracies in %, std the sample std over seeds; the best trial's
test accuracy minus the reference's, its 95% Welch interval (comparisons.py) and the verdict; the
report's Table 4 beside it (published.csv): its reference and its optimum with that optimum's (α, ΔT)."""


def finished_trials(study) -> list:
    from optuna.trial import TrialState
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def trial_accuracies(root: Path, trial) -> dict:
    """Validation and test accuracy of a trial's runs, mean and sample std over seeds, read back
    from their run directories as `report` reads them."""
    records = [report.run_record(root / name) for name in trial.user_attrs["runs"]]
    result = {}
    for key in ("val", "test"):
        values = [r[f"{key}_acc"] for r in records]
        result[f"{key}_mean"] = statistics.fmean(values)
        result[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        result[f"{key}_values"] = values
    return result


def study_row(root: Path, study) -> dict | None:
    """Table 4's row of one study: its reference trial and its best trial, chosen by validation
    accuracy alone. None before the reference trial has finished."""
    trials = finished_trials(study)
    reference = [t for t in trials if t.user_attrs.get("reference")]
    if not reference:
        return None
    best = max(trials, key=lambda t: (t.value, -t.number))
    config = study.user_attrs["config"]["sparsity"]
    row = {"method": config["method"], "distribution": config["distribution"], "density": config["density"],
           "trials": len(trials), "best_trial": best.number,
           "best_drop_fraction": best.params["drop_fraction"], "best_update_interval": best.params["update_interval"]}
    row.update({f"reference_{k}": v for k, v in trial_accuracies(root, reference[0]).items()})
    row.update({f"best_{k}": v for k, v in trial_accuracies(root, best).items()})
    interval = comparisons.welch(row["best_test_values"], row["reference_test_values"])
    row.update(seeds=len(row["best_test_values"]), difference=row["best_test_mean"] - row["reference_test_mean"],
               low=interval and interval["low"], high=interval and interval["high"],
               verdict="the reference is the best trial" if best is reference[0]
               else comparisons.verdict(interval, "best", "reference"))
    row.update(table_4(study.user_attrs["config"]))
    return row


def table_4(config: dict) -> dict:
    """The report's Table 4 cells of this search's (distribution, density), on CIFAR-10 (or synthetic
    data standing in for it): {} where the report has none."""
    if config["train"]["dataset"] not in ("cifar10", "synthetic"):
        return {}
    sparsity = config["sparsity"]
    found = {c["item"]: c for c in published.read() if c["item"].startswith("table4-") and c["method"] == sparsity["method"]
             and (c["distribution"], c["density"]) == (sparsity["distribution"], sparsity["density"])}
    if not found:
        return {}
    optimum = found["table4-optimal"]
    return {"published_reference": found["table4-reference"]["mean"], "published_optimum": optimum["mean"],
            "published_alpha": optimum["drop_fraction"], "published_interval": int(optimum["update_interval"])}


def pm(row: dict, key: str) -> str:
    """"92.41 ± 0.06" over seeds; one seed has no spread and shows none."""
    spread = f" ± {row[key + '_std']:.2f}" if len(row[key + "_values"]) > 1 else ""
    return f"{row[key + '_mean']:.2f}{spread}"


def published_cell(row: dict, key: str) -> str:
    return "" if row.get(key) is None else f"{row[key]:g}"


def markdown(rows: list[dict]) -> str:
    """Table 4's layout: per (distribution, density), the reference against the best trial."""
    lines = ["Accuracy (%) on the validation and the test set, mean ± sample std over seeds, of the "
             "reference (α = 0.3, ΔT = 100) and of the trial with the best mean validation accuracy; then the "
             f"best's test accuracy minus the reference's, with its {comparisons.CONFIDENCE:.0%} interval "
             "(Welch), and the verdict; last, the report's Table 4 (full length, CIFAR-10: another budget unless "
             "these runs are too): its reference's test accuracy and its optimum's, with that optimum's (α, ΔT).", "",
             "| method | distribution | density | trials | seeds | reference val | reference test | best α | best ΔT "
             "| best val | best test | best − reference | verdict | report: reference | report: optimum (α, ΔT) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {labels.method_name(r['method'])} | {r['distribution']} | {r['density']:g} | {r['trials']} "
                     f"| {r['seeds']} | {pm(r, 'reference_val')} | {pm(r, 'reference_test')} "
                     f"| {r['best_drop_fraction']:g} | {r['best_update_interval']} | {pm(r, 'best_val')} "
                     f"| {pm(r, 'best_test')} | {comparisons.format_interval(r)} | {r['verdict']} "
                     f"| {published_cell(r, 'published_reference')} | {published_cell(r, 'published_optimum')}"
                     + (f" ({r['published_alpha']:g}, {r['published_interval']})" if r.get("published_alpha") else "")
                     + " |")
    return "\n".join(lines) + "\n"


def write_tables(root: Path, rows: list[dict]) -> list[Path]:
    """ROOT/tune.md and ROOT/tune.csv, each replaced whole."""
    md, table = root / "tune.md", markdown(rows)
    runs.write_text(md, table)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    runs.write_text(root / "tune.csv", text.getvalue())
    return [md, root / "tune.csv"]


def plot_search(study, row: dict, path: Path) -> Path:
    """α × ΔT of every finished trial coloured by its validation accuracy, over the surface they span
    (from four trials on); the reference and the best trial marked."""
    figure, ax = figures.new_axes(7, 4.5)
    trials = finished_trials(study)
    alphas, intervals = [t.params["drop_fraction"] for t in trials], [t.params["update_interval"] for t in trials]
    if len(trials) >= 4:  # the contour of the report's supplement: validation accuracy interpolated between trials
        try:
            ax.tricontourf(alphas, intervals, [t.value for t in trials], levels=12, cmap="viridis", alpha=0.45)
        except (RuntimeError, ValueError):  # trials on one line: no surface between them
            pass
    points = ax.scatter([t.params["drop_fraction"] for t in trials], [t.params["update_interval"] for t in trials],
                        c=[t.value for t in trials], cmap="viridis", s=50, edgecolors="black", linewidths=0.5)
    figure.colorbar(points, ax=ax, label="validation accuracy (%), mean over seeds")
    ax.scatter([0.3], [100], marker="s", s=160, facecolors="none", edgecolors="red", linewidths=1.5,
               label="reference (α = 0.3, ΔT = 100)")
    ax.scatter([row["best_drop_fraction"]], [row["best_update_interval"]], marker="*", s=260,
               facecolors="none", edgecolors="black", linewidths=1.2, label=f"best (trial {row['best_trial']})")
    (a_low, a_high), (t_low, t_high, _) = study.user_attrs["space"]["alpha_range"], study.user_attrs["space"]["interval_range"]
    ax.set_xlim(a_low - 0.03 * (a_high - a_low), a_high + 0.03 * (a_high - a_low))  # the whole search space
    ax.set_ylim(t_low - 0.03 * (t_high - t_low), t_high + 0.03 * (t_high - t_low))
    ax.set(xlabel="drop fraction α", ylabel="update interval ΔT (steps)",
           title=f"{study.study_name}: finished trials")
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return figures.save(figure, path)


def plot_history(study, path: Path) -> Path:
    """Each finished trial's validation accuracy in trial order, and the best so far."""
    figure, ax = figures.new_axes(7, 4)
    trials = sorted(finished_trials(study), key=lambda t: t.number)
    numbers, values = [t.number for t in trials], [t.value for t in trials]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, [max(values[:i + 1]) for i in range(len(values))], where="post", label="best so far")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial (number in the study)", ylabel="validation accuracy (%), mean over seeds",
           title=f"{study.study_name}: optimisation history")
    ax.grid(alpha=0.3)
    figures.legend_outside(ax)
    return figures.save(figure, path)


def write_outputs(root: Path, storage, console) -> list[dict]:
    """Table 4 (printed, ROOT/tune.md, ROOT/tune.csv) and each study's figures under ROOT/figures/."""
    import optuna
    rows, written = [], []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        row = study_row(root, study)
        if row is None:
            continue
        rows.append(row)
        written += [plot_search(study, row, root / "figures" / f"tune-{name}-search.png"),
                    plot_history(study, root / "figures" / f"tune-{name}-history.png")]
    if not rows:
        return rows
    console.print(markdown(rows), highlight=False, soft_wrap=True)
    for path in write_tables(root, rows) + written:
        console.print(f"wrote {path}", highlight=False)
    return rows
