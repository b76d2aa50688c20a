"""The report's figures from its groups and runs: accuracy against density, FLOPs and lr; layer densities.

matplotlib's Agg canvas draws straight to a PNG: no screen needed, and no pyplot state, so a figure
is freed with the function that made it and none is left open. matplotlib is imported inside the
functions that draw, so that a command that draws nothing does not pay for it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import flops
from flops import NO_DISTRIBUTION
from rigl import SparsityConfig
from rigl_harness.labels import (DISTRIBUTION_SUFFIX, GROUP_KEYS, ROW_KEYS, format_ratio, group_label, method_name,
                                 row_order, several_tasks)
from rigl_harness.runs import atomic_write


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")


def series_style(i: int) -> dict:
    """Colour, marker and line style of the i-th series: 10 colours, then new markers and dashes,
    so twenty-odd methods or layers stay tellable apart."""
    from matplotlib import colormaps
    return {"color": colormaps["tab10"].colors[i % 10], "marker": MARKERS[i // 10 % len(MARKERS)],
            "linestyle": LINESTYLES[i // 10 % len(LINESTYLES)]}


def new_axes(width: float = 8.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
    return path


def legend_outside(ax, fontsize: float = 8) -> None:
    """Many methods or layers make a long legend: right of the axes it hides no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize, frameon=False)


def series_by_label(groups: list[dict]) -> dict[str, list[dict]]:
    """The groups of each table row, by ascending density: one line or marker series per row."""
    with_task = several_tasks(groups)
    series: dict[str, list[dict]] = {}
    for group in sorted(groups, key=lambda g: (row_order(tuple(g[k] for k in ROW_KEYS)), g["density"])):
        series.setdefault(group_label(group, with_task), []).append(group)
    return series


def plot_dense_reference(groups: list[dict], ax) -> None:
    """Each dense group as a dashed horizontal line with its ±std band: the accuracy to reach."""
    for label, members in series_by_label([g for g in groups if g["method"] == "dense"]).items():
        mean, std = members[0]["test_mean"], members[0]["test_std"]
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"{label} (d = 1)")
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)


def label_styles(groups: list[dict]) -> dict[str, dict]:
    """The style of each sparse table row, the same in every figure that shows it."""
    sparse = [g for g in groups if g["method"] != "dense"]
    return {label: series_style(i) for i, label in enumerate(series_by_label(sparse))}


def log_axis_ticks(axis) -> None:
    """Ticks at 1, 2, 5 × 10^k written as plain numbers (0.05, 0.1, 0.2), not as powers of ten."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_locator(NullLocator())


def plot_mean_and_band(ax, x_key: str, members: list[dict], label: str, style: dict) -> None:
    """One series: the groups' mean test accuracy against `x_key`, with a ±std band."""
    x, y = [g[x_key] for g in members], [g["test_mean"] for g in members]
    std = [g["test_std"] for g in members]
    ax.plot(x, y, markersize=4, label=label, **style)
    ax.fill_between(x, [a - s for a, s in zip(y, std)], [a + s for a, s in zip(y, std)],
                    color=style["color"], alpha=0.15, linewidth=0)


def log_axis_at(ax, values: list[float]) -> None:
    """A log x axis with ticks at exactly these values, written plainly."""
    ax.set_xscale("log")
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()


def plot_accuracy_vs_density(groups: list[dict], path) -> Path | None:
    """Test accuracy against density, one line with a ±std band per table row, dense dashed.
    None when there is no sparse group: dense alone has no density axis."""
    sparse = [g for g in groups if g["method"] != "dense"]
    if not sparse:
        return None
    styles = label_styles(groups)
    figure, ax = new_axes()
    for label, members in series_by_label(sparse).items():
        plot_mean_and_band(ax, "density", members, label, styles[label])
    plot_dense_reference(groups, ax)
    log_axis_at(ax, sorted({g["density"] for g in sparse}))  # the report's 0.05 ... 0.5 spread evenly
    ax.set(xlabel="density d (fraction of weights active; log scale)", ylabel="test accuracy (%)",
           title="Test accuracy against density (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(figure, path)


DENSITY_PANELS = (("Random (uniform), 1×", lambda g: g["distribution"] == "uniform" and g["multiplier"] == 1,
                   lambda g: False),
                  ("ERK, 1×", lambda g: g["distribution"] == "erk" and g["multiplier"] == 1, lambda g: False),
                  ("trained longer (with pruning and RigL (ERK) at 1×)", lambda g: g["multiplier"] != 1,
                   lambda g: g["multiplier"] == 1 and (g["method"] == "pruning"
                                                       or (g["method"] == "rigl" and g["distribution"] == "erk"))))
"""The report's Figure 1 (and 2): test accuracy against density in three panels, each with its own
rows and the rows it shows beside them."""


def plot_accuracy_vs_density_panels(groups: list[dict], path) -> Path | None:
    """Figure 1's three panels (Random, ERK, trained longer), each row a line with a ±std band over
    the densities, dense dashed in each, and the report's published mean of a row (where it has
    one) as a hollow marker. None unless two panels have a row at several densities."""
    sparse = [g for g in groups if g["method"] not in ("dense", "small-dense") and not g.get("origin")]
    panels = [(title, [g for g in sparse if own(g) or beside(g)]) for title, own, beside in DENSITY_PANELS]
    owned = [[g for g in sparse if own(g)] for _, own, _ in DENSITY_PANELS]
    if sum(any(len(m) > 1 for m in series_by_label(members).values()) for members in owned) < 2:
        return None
    styles = label_styles(groups)
    figure, _ = new_axes(16, 4.8)
    figure.clear()
    axes = figure.subplots(1, 3, sharey=True)
    for ax, (title, members) in zip(axes, panels):
        for label, series in series_by_label(members).items():
            plot_mean_and_band(ax, "density", series, label, styles[label])
            published = [(g["density"], g["published_mean"]) for g in series
                         if g.get("published_mean") is not None and g["full_length"]]  # the same budget only
            if published:
                ax.plot(*zip(*published), linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                        color=styles[label]["color"])
        plot_dense_reference(groups, ax)
        log_axis_at(ax, sorted({g["density"] for g in sparse}))
        ax.set(title=title, xlabel="density d (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test accuracy (%), mean ± std over seeds")
    figure.suptitle("Test accuracy against density (full-length rows: the report's published mean as a hollow circle)",
                    fontsize=10)
    return save(figure, path)


def plot_accuracy_vs_lr(groups: list[dict], path) -> Path | None:
    """The report's learning-rate figure (Figure 3): a panel per (distribution, density), test
    accuracy against lr (log axis) in each, one line with a ±std band per (method, α, ΔT). None
    unless some setting has several lrs."""
    groups = [g for g in groups if g["lr"] is not None]  # a configuration that does not record it
    panels: dict[tuple, dict[str, list[dict]]] = {}
    for group in sorted(groups, key=lambda g: (row_order(tuple(g[k] for k in ROW_KEYS)), g["lr"])):
        label = (f"{method_name(group['method'])} α={group['drop_fraction']:g} ΔT={group['update_interval']}"
                 + (f" {group['origin']}" if group.get("origin") else ""))
        panel = panels.setdefault((group["distribution"], group["density"]), {})
        panel.setdefault(label, []).append(group)
    if not any(len({g["lr"] for g in members}) > 1 for panel in panels.values() for members in panel.values()):
        return None
    distributions = sorted({d for d, _ in panels}, key=lambda d: list(DISTRIBUTION_SUFFIX).index(d)
                           if d in DISTRIBUTION_SUFFIX else 99)
    densities = sorted({d for _, d in panels})
    figure, _ = new_axes(4.2 * len(densities) + 2, 3.4 * len(distributions))
    figure.clear()
    axes = figure.subplots(len(distributions), len(densities), squeeze=False, sharey=True)
    labels = sorted({label for panel in panels.values() for label in panel})
    for (distribution, density), panel in panels.items():
        ax = axes[distributions.index(distribution)][densities.index(density)]
        for label, members in panel.items():
            plot_mean_and_band(ax, "lr", members, label, series_style(labels.index(label)))
        log_axis_at(ax, sorted({g["lr"] for g in groups}))
        name = "Random" if distribution == "uniform" else distribution.upper()
        ax.set(title=f"{name}, d = {density:g}", xlabel="learning rate (log scale)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)")
    legend_outside(axes[0][-1])
    figure.suptitle("Test accuracy against learning rate (mean ± std over seeds)", fontsize=10)
    return save(figure, path)


def plot_accuracy_vs_flops(groups: list[dict], path) -> Path | None:
    """Test accuracy against training FLOPs (×dense on the 1× schedule), error bars = std: methods
    compared at equal training cost. Colour = table row, marker = density. None when no run
    recorded its FLOPs."""
    known = [g for g in groups if g["train_flops_ratio"] is not None]
    if not known:
        return None
    styles = label_styles(groups)
    densities = sorted({g["density"] for g in known if g["method"] != "dense"})
    marker_of = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(densities)}
    figure, ax = new_axes()
    for label, members in series_by_label([g for g in known if g["method"] != "dense"]).items():
        style = styles[label]
        ax.plot([g["train_flops_ratio"] for g in members], [g["test_mean"] for g in members],
                color=style["color"], linestyle=style["linestyle"], linewidth=1, label=label)
        for g in members:
            ax.errorbar(g["train_flops_ratio"], g["test_mean"], yerr=g["test_std"], capsize=2,
                        color=style["color"], marker=marker_of[g["density"]], markersize=5)
    plot_dense_reference(known, ax)
    for g in known:
        if g["method"] == "dense":  # where dense training itself sits: 1× its own cost
            ax.errorbar(g["train_flops_ratio"], g["test_mean"], yerr=g["test_std"], color="black",
                        marker="*", markersize=9, capsize=2, zorder=5)
    for d in densities:  # marker key: grey proxies, drawn nowhere
        ax.plot([], [], color="0.4", marker=marker_of[d], linestyle="none", label=f"d = {d:g}")
    ax.set_xscale("log")
    log_axis_ticks(ax.xaxis)
    ax.set(xlabel="training FLOPs (× dense training on the 1× schedule; log scale)",
           ylabel="test accuracy (%)", title="Test accuracy against training cost (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save(figure, path)


def flop_matched_pairs(groups: list[dict]) -> list[tuple[dict, dict]]:
    """(uniform, FLOP-matched) groups of one method and task at one --density: a uniform ("Random")
    run and a run of another distribution trained at uniform's FLOPs (--match-flops uniform)."""
    def key(g):
        return tuple(g[k] for k in GROUP_KEYS if k not in ("distribution", "origin"))
    uniform = {key(g): g for g in groups if g["distribution"] == "uniform" and not g["origin"]}
    return [(uniform[key(g)], g) for g in groups
            if g["origin"] == "at uniform's FLOPs" and g["distribution"] != "uniform" and key(g) in uniform]


def plot_distributions_at_equal_flops(groups: list[dict], path) -> Path | None:
    """The report's "Sparsity Distribution vs FLOP Consumption": test accuracy of uniform ("Random")
    and of ERK trained at uniform's FLOPs, side by side at each training-FLOP level (uniform's
    FLOPs ×dense), error bars = std. None without such pairs."""
    pairs = sorted(flop_matched_pairs(groups), key=lambda p: (p[0]["dataset"], p[0]["model"], p[0]["density"]))
    if not pairs:
        return None
    figure, ax = new_axes()
    width, with_task = 0.38, several_tasks([g for pair in pairs for g in pair])
    for side, (offset, name) in enumerate(((-width / 2, "uniform (Random)"), (width / 2, "at uniform's FLOPs"))):
        bars = [pair[side] for pair in pairs]
        ax.bar([i + offset for i in range(len(pairs))], [g["test_mean"] for g in bars], width,
               yerr=[g["test_std"] for g in bars], capsize=3, label=name if side == 0 else
               ", ".join(sorted({group_label(g) for g in bars})), color=series_style(side)["color"])
    ax.set_xticks(range(len(pairs)), [f"{format_ratio(u['train_flops_ratio'])}\nd = {u['density']:g}"
                                      + (f"\n{u['model']}" if with_task else "") for u, _ in pairs])
    low = min(g["test_mean"] - g["test_std"] for pair in pairs for g in pair)
    ax.set_ylim(bottom=max(0.0, low - 2))
    ax.set(xlabel="training FLOPs of the uniform run (× dense on the 1× schedule) and its --density",
           ylabel="test accuracy (%)", title="Distributions at equal FLOPs (mean ± std over seeds)")
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    return save(figure, path)


def run_title(run: dict) -> str:
    return f"{group_label(run)}, d = {run['density']:g}, seed {run['seed']}"


def plot_layer_densities(run: dict, path) -> Path | None:
    """Per-layer density of one run's final masks next to its initial allocation (epoch 0 of
    densities.jsonl). None when the summary lists no layers."""
    layers = run["layers"]
    if not layers:
        return None
    names = [layer["name"] for layer in layers]
    initial = next((r["densities"] for r in run["densities"] if r["epoch"] == 0), None)
    figure, ax = new_axes(width=max(8.0, 0.32 * len(names)), height=5.0)
    x = list(range(len(names)))
    width, shift = (0.4, 0.2) if initial else (0.8, 0.0)  # two bars share a slot, or one fills it
    if initial:
        ax.bar([i - shift for i in x], [initial.get(n, 0.0) for n in names], width,
               color="0.7", label="initial (epoch 0)")
    ax.bar([i + shift for i in x], [layer["density"] for layer in layers], width,
           color="tab:blue", label="final masks")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set(xlabel="layer", ylabel="density (fraction of weights active)",
           title=f"Per-layer density: {run_title(run)}")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax)
    return save(figure, path)


def plot_density_over_training(run: dict, path) -> Path | None:
    """Each layer's density after every epoch (densities.jsonl): how RigL-SG/SM move the budget.
    None when there is no line to draw: fewer than two records."""
    records = run["densities"]
    if len(records) < 2:
        return None
    epochs = [r["epoch"] for r in records]
    figure, ax = new_axes(width=9.0, height=5.0)
    for i, name in enumerate(records[0]["densities"]):
        style = series_style(i)  # lines only: 250 epochs of markers would hide them
        ax.plot(epochs, [r["densities"].get(name) for r in records], color=style["color"],
                linestyle=style["linestyle"], linewidth=1, label=name)
    ax.set(xlabel="epoch", ylabel="density (fraction of weights active; log scale)",
           title=f"Layer densities during training: {run_title(run)}")
    # Log scale: at d = 0.05 most layers sit near 0.05 and a dense first layer at 1; moves of
    # a few hundredths must still show.
    ax.set_yscale("log")
    log_axis_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=6)
    return save(figure, path)


@functools.cache
def flop_levels(dataset: str, model: str, density: float) -> dict[str, float]:
    """Forward FLOPs ×dense of fixed uniform ("Random") and ERK masks at d (flops.py's count): the
    reference levels of the report's density-evolution figure."""
    counted = flops.counted_model(model, dataset)
    return {label: flops.method_flops(model, dataset, SparsityConfig(method="static", density=density,
                                                                     distribution=spread), 1.0, counted)
            ["inference_flops_ratio"] for label, spread in (("Random (uniform)", "uniform"), ("ERK", "erk"))}


def plot_flops_panel(ax, runs: list[dict], levels: dict[str, float]) -> None:
    """Left panel: each run's forward FLOPs ×dense after every epoch, against the training step,
    with dense (1) and fixed Random and ERK masks as horizontal lines."""
    for i, run in enumerate(runs):
        steps, ratios = zip(*run["flops_history"])
        ax.plot(steps, ratios, markersize=3, label=group_label(run), **series_style(i))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="dense")
    for (label, level), grey in zip(levels.items(), ("0.35", "0.6")):
        ax.axhline(level, color=grey, linestyle=":", linewidth=1.5, label=f"{label}, fixed")
    ax.set_yscale("log")
    log_axis_ticks(ax.yaxis)
    ax.set(xlabel="training step", ylabel="forward FLOPs (× dense; log scale)", title="FLOPs during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_final_densities_panel(ax, runs: list[dict]) -> None:
    """Right panel: the final per-layer densities of the runs side by side, a bar each per layer."""
    names = [layer["name"] for layer in runs[0]["layers"]]
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        final = {layer["name"]: layer["density"] for layer in run["layers"]}
        ax.bar([j - 0.4 + (i + 0.5) * width for j in range(len(names))], [final.get(n, 0.0) for n in names],
               width, color=series_style(i)["color"], label=group_label(run))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yscale("log")
    log_axis_ticks(ax.yaxis)
    ax.set(xlabel="layer", ylabel="final density (log scale)", title="Final per-layer densities")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax, fontsize=7)


def plot_flops_over_training(runs: list[dict], path) -> Path:
    """The report's density-evolution figure for runs of one task and density (one seed of each
    configuration): their forward FLOPs over training, and their final layer densities."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    first = runs[0]
    figure = Figure(figsize=(max(14.0, 0.1 * len(first["layers"]) * len(runs)), 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    flops_ax, layers_ax = figure.subplots(1, 2, width_ratios=(1, 1.6))
    plot_flops_panel(flops_ax, runs, flop_levels(first["dataset"], first["model"], first["density"]))
    plot_final_densities_panel(layers_ax, runs)
    figure.suptitle(f"{first['dataset']} {first['model']}, d = {first['density']:g}: density distribution evolution")
    return save(figure, path)


def flops_figures(runs: list[dict], groups: list[dict], folder: Path) -> list[Path]:
    """One density-evolution figure per task and density whose masked runs recorded their FLOPs."""
    by_path = {run["path"]: run for run in runs}
    by_task: dict[tuple, list[dict]] = {}
    for group in groups:
        run = by_path[group["paths"][0]]
        if run["flops_history"] and run["layers"] and group["distribution"] != NO_DISTRIBUTION:
            by_task.setdefault((group["dataset"], group["model"], group["density"]), []).append(run)
    return [plot_flops_over_training(members, folder / f"flops_over_training_{dataset}-{model}-d{density:g}.png")
            for (dataset, model, density), members in sorted(by_task.items())]


def representative_run(runs: list[dict]) -> dict | None:
    """The run whose masks are drawn: RigL (ERK) at the lowest density if there is one, else the
    sparse run of lowest density; 1× schedule before longer ones, then the first seed."""
    masked = [r for r in runs if r["distribution"] != NO_DISTRIBUTION]
    if not masked:
        return None
    return min(masked, key=lambda r: (not (r["method"] == "rigl" and r["distribution"] == "erk"),
                                      r["density"], r["multiplier"] != 1, r["seed"], r["path"]))


def group_slug(group: dict) -> str:
    """A file name part naming one group unambiguously, ASCII only."""
    return (f"{group['dataset']}-{group['model']}-{group['method']}-{group['distribution']}"
            f"-d{group['density']:g}-x{group['multiplier']:g}-a{group['drop_fraction']:g}"
            f"-dt{group['update_interval']}" + ("" if group["lr"] is None else f"-lr{group['lr']:g}")
            + "".join(f"-{word}" for word in re.findall(r"[A-Za-z0-9]+", group.get("origin") or "")))


def report_figures(runs: list[dict], groups: list[dict], folder: Path) -> list[Path]:
    """Every figure of the report that the runs can fill; the paths written."""
    written = [plot_accuracy_vs_density(groups, folder / "accuracy_vs_density.png"),
               plot_accuracy_vs_density_panels(groups, folder / "accuracy_vs_density_panels.png"),
               plot_accuracy_vs_flops(groups, folder / "accuracy_vs_flops.png"),
               plot_accuracy_vs_lr(groups, folder / "accuracy_vs_lr.png"),
               plot_distributions_at_equal_flops(groups, folder / "distributions_at_equal_flops.png")]
    chosen = representative_run(runs)
    if chosen is not None:
        written.append(plot_layer_densities(chosen, folder / "layer_densities.png"))
    by_path = {run["path"]: run for run in runs}
    for group in groups:
        if group["method"] in ("rigl-sg", "rigl-sm"):  # the methods whose layer budgets move
            name = f"density_over_training_{group_slug(group)}.png"
            written.append(plot_density_over_training(by_path[group["paths"][0]], folder / name))
    written += flops_figures(runs, groups, folder)
    return [path for path in written if path is not None]
