"""`python rigl.py report ROOT`: the report's Table 2 and figures from finished run directories.

Report:  Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021: Table 2 (test
         accuracy mean ± std over seeds, with training and test FLOPs ×dense, rows = method and
         distribution, columns = density) and the accuracy-against-density and -FLOPs figures.
Input:   every folder under ROOT with config.json and summary.json (`python rigl.py train` or
         `sweep` wrote them), and densities.jsonl for the per-layer figures.
Output:  ROOT/report.md, ROOT/report.csv and ROOT/figures/*.png.

Runs are pooled over seeds only when every other setting agrees; otherwise the report refuses and
names what differs. matplotlib is imported inside the functions that draw, so that a report
without figures does not pay for it.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import statistics
from pathlib import Path
from typing import get_args

from rich.table import Table

import flops
from flops import NO_DISTRIBUTION
from rigl import CHANGES_EVERY_INTERVAL, DROP_AND_GROW, UNMASKED, Method, SparsityConfig
from rigl_harness.runs import atomic_write, may_differ, read_config, read_json, write_text
from train import TrainConfig, resolve_recipe

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


def find_run_dirs(root) -> tuple[list[Path], list[Path]]:
    """Finished runs (config.json and summary.json) and unfinished ones (config.json only)."""
    finished, unfinished = [], []
    for config in sorted(Path(root).rglob("config.json")):
        (finished if (config.parent / "summary.json").exists() else unfinished).append(config.parent)
    return finished, unfinished


SOURCES = ("masks_from", "densities_from", "init_from")
"""The train fields naming another run's directory: paths differ between seeds, so they never split rows."""


def origin_of(config: dict, method: str) -> str:
    """How a row says where a run's masks, weights or density came from (config.json's
    "derived_from", and "layer_densities" set by hand): "from RigL-SM's masks", "at uniform's
    FLOPs", "at set layer densities"; "" for a plain run and for lottery, whose masks and weights
    are the method itself."""
    derived = config.get("derived_from") or {}
    if not isinstance(derived, dict) or method == "lottery":
        return ""
    source = {option: method_name(str((derived.get(option) or {}).get("method", "another run")))
              for option in SOURCES if derived.get(option)}
    words = [f"from {source['masks_from']}'s masks" if "masks_from" in source else "",
             f"at {source['densities_from']}'s densities" if "densities_from" in source else "",
             f"from {source['init_from']}'s initial weights" if "init_from" in source else "",
             f"at {derived['match_flops'].get('target')}'s FLOPs" if derived.get("match_flops") else "",
             "at set layer densities" if config.get("layer_densities") and "densities_from" not in source else ""]
    return " ".join(w for w in words if w)


def config_record(path) -> dict:
    """What a run directory's config.json says, in the report's terms (finished or not)."""
    train, sparse = read_config(path)
    derived = read_json(Path(path) / "config.json").get("derived_from") or {}
    try:
        return run_settings(path, train, sparse, derived)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{Path(path) / 'config.json'} is not a run's configuration (no {error})") from None


def run_settings(path, train: dict, sparse: dict, derived: dict | None = None) -> dict:
    """The report's view of one configuration, and `settings`: every field that must agree
    between the runs of one row (all but the seed and what may_differ)."""
    method = sparse["method"]
    # α and ΔT only matter where masks change: elsewhere they neither split groups nor label rows.
    # A row names α and ΔT only where a run used other values than the paper's.
    alpha = sparse["drop_fraction"] if method in DROP_AND_GROW else SparsityConfig.drop_fraction
    interval = sparse["update_interval"] if method in CHANGES_EVERY_INTERVAL else SparsityConfig.update_interval
    variant = (f" α={alpha:g}" if alpha != SparsityConfig.drop_fraction else "") + \
        (f" ΔT={interval}" if interval != SparsityConfig.update_interval else "") + \
        (f" lr={train['lr']:g}" if train.get("lr") not in (None, recipe_lr(train)) else "")
    record = {"path": str(path), "dataset": train["dataset"], "model": train["model"], "method": method,
              "distribution": NO_DISTRIBUTION if method in UNMASKED else sparse["distribution"],
              # Dense is trained at d = 1 whatever --density said; Small-Dense keeps the d it matches;
              # a run at another distribution's FLOPs sits in the column of the --density it matched.
              "density": 1.0 if method == "dense" else matched_density(derived) or sparse["density"],
              "origin": origin_of({"derived_from": derived, "layer_densities": sparse.get("layer_densities")}, method),
              "multiplier": train["multiplier"], "seed": train["seed"],
              "drop_fraction": alpha, "update_interval": interval, "lr": train.get("lr"), "variant": variant}
    # --densities-from's layer densities come from each seed's own source run; set by hand, they must agree
    per_seed = ("layer_densities",) if (derived or {}).get("densities_from") else ()
    settings = {f"{name}.{key}": value for name, section in (("train", train), ("sparsity", sparse))
                for key, value in section.items()
                if key not in may_differ(train) + ("seed", "mask_from") + SOURCES + per_seed}
    settings.update({f"sparsity.{key}": record[key] for key in ("distribution", "density", "drop_fraction",
                                                               "update_interval")})
    return {**record, "settings": settings}


def matched_density(derived: dict | None) -> float | None:
    """The --density whose FLOPs a --match-flops run matched; None for any other run."""
    return ((derived or {}).get("match_flops") or {}).get("density")


def recipe_lr(train: dict) -> float:
    """The learning rate of the run's dataset recipe at its batch size: a row names any other."""
    return resolve_recipe(TrainConfig(dataset=train["dataset"], batch_size=train.get("batch_size"))).lr


def run_record(path) -> dict:
    """One finished run as a flat dict: its configuration, its final numbers, and the layer
    densities of its figures, each file checked before the report writes anything."""
    summary = read_summary(Path(path) / "summary.json")
    return {**config_record(path), "test_acc": summary["final_test_acc"],
            "val_acc": summary.get("final_val_acc"),
            # Summaries older than the FLOP accounting have no ratios: None, shown as "n/a".
            "train_flops_ratio": summary.get("train_flops_ratio"),
            "inference_flops_ratio": summary.get("inference_flops_ratio"),
            "explored": summary.get("explored"),  # None for dense, and for runs older than it
            "epochs": summary.get("epochs"), "layers": summary.get("layers") or [],
            "densities": read_densities(path), "flops_history": read_flops_history(path)}


SUMMARY_NUMBERS = {"final_test_acc": True, "final_val_acc": False, "train_flops_ratio": False,
                   "inference_flops_ratio": False, "explored": False, "epochs": False}
"""The numbers of summary.json that the report reads, and whether each is required (else null is allowed)."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_summary(path: Path) -> dict:
    """summary.json, its numbers and its layers checked; a bad one is named in one line."""
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} is not a run's summary (not a JSON object)")
    for key, required in SUMMARY_NUMBERS.items():
        value = summary.get(key)
        if not is_number(value) and (required or value is not None):
            raise ValueError(f"{path} is not a run's summary: {key} is {value!r}, not a finite number")
    layers = summary.get("layers") or []
    if not isinstance(layers, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                               and is_number(r.get("density")) for r in layers):
        raise ValueError(f"{path} is not a run's summary: layers is not a list of {{name, density}}")
    return summary


def collect_runs(root) -> list[dict]:
    """Every finished run under `root`, sorted by configuration, then seed, then path."""
    finished, _ = find_run_dirs(root)
    runs = [run_record(path) for path in finished]
    return sorted(runs, key=lambda r: (*[r[k] for k in GROUP_KEYS], r["seed"], r["path"]))


def mean_or_none(values: list) -> float | None:
    """Mean of the values that are known; None when none is."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def aggregate(runs: list[dict]) -> list[dict]:
    """One dict per configuration: seeds counted, test accuracy mean and sample std, mean FLOPs."""
    by_key: dict[tuple, list[dict]] = {}
    for run in runs:
        by_key.setdefault(tuple(run[k] for k in GROUP_KEYS), []).append(run)
    groups = []
    for key, members in sorted(by_key.items()):
        members = sorted(members, key=lambda r: (r["seed"], r["path"]))
        check_poolable(members)
        accs = [r["test_acc"] for r in members]
        groups.append({**dict(zip(GROUP_KEYS, key)), "variant": members[0]["variant"], "n": len(members),
                       "test_mean": statistics.fmean(accs),
                       # Sample std (ddof = 1), as the report's "±"; a single seed has no spread.
                       "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "train_flops_ratio": mean_or_none([r["train_flops_ratio"] for r in members]),
                       "inference_flops_ratio": mean_or_none([r["inference_flops_ratio"] for r in members]),
                       "explored": mean_or_none([r["explored"] for r in members]),
                       "seeds": [r["seed"] for r in members], "paths": [r["path"] for r in members]})
    return groups


def check_poolable(members: list[dict]) -> None:
    """The runs of one row must differ in their seed alone, each seed once; refuse otherwise."""
    first = members[0]
    for run in members[1:]:
        differ = sorted(k for k in first["settings"].keys() | run["settings"].keys()
                        if first["settings"].get(k) != run["settings"].get(k))
        if differ:
            detail = ", ".join(f"{k} {first['settings'].get(k)!r} vs {run['settings'].get(k)!r}" for k in differ)
            raise ValueError(f"{first['path']} and {run['path']} would share a row but differ in {detail}: "
                             f"report them from separate directories")
    seeds = [r["seed"] for r in members]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        paths = [r["path"] for r in members if r["seed"] == twice[0]]
        raise ValueError(f"seed {twice[0]} is run more than once in one row ({', '.join(paths)}): keep one")


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
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def format_cell(group: dict) -> str:
    """"92.41 ± 0.06 (0.35×, 0.35×)": test accuracy over seeds, (training, inference) FLOPs ×dense."""
    return (f"{group['test_mean']:.2f} ± {group['test_std']:.2f} "
            f"({format_ratio(group['train_flops_ratio'])}, {format_ratio(group['inference_flops_ratio'])})")


def format_seeds(counts: list[int]) -> str:
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def format_explored(group: dict) -> str:
    """"0.4312": the mean exploration rate over seeds; "n/a" for dense and runs without it."""
    return "n/a" if group["explored"] is None else f"{group['explored']:.4f}"


def table_rows(groups: list[dict], cell=format_cell) -> tuple[list[str], list[list[str]]]:
    """Table 2's layout: a row per method, distribution, multiplier (α, ΔT); a column per density,
    each cell `cell(group)`.

    Densities ascend left to right. Dense is trained at d = 1 and so fills the last column, "d = 1",
    alone (the report prints it under d = 0.1; its own column keeps every column one density)."""
    densities = sorted({g["density"] for g in groups})
    rows_by_key: dict[tuple, list[dict]] = {}
    for group in groups:
        rows_by_key.setdefault(tuple(group[k] for k in ROW_KEYS), []).append(group)
    with_task = several_tasks(groups)
    header = ["method", *[f"d = {d:g}" for d in densities], "seeds"]
    rows = []
    for key in sorted(rows_by_key, key=row_order):
        members = rows_by_key[key]
        cells = {g["density"]: cell(g) for g in members}
        rows.append([group_label(members[0], with_task), *[cells.get(d, "") for d in densities],
                     format_seeds([g["n"] for g in members])])
    return header, rows


CSV_COLUMNS = ("dataset", "model", "method", "distribution", "multiplier", "drop_fraction",
               "update_interval", "lr", "origin", "density", "n", "test_mean", "test_std", "train_flops_ratio",
               "inference_flops_ratio", "explored")


def table_caption(groups: list[dict]) -> str:
    tasks = ", ".join(sorted({f"{g['dataset']} {g['model']}" for g in groups}))
    return (f"Test accuracy (%) on {tasks}: mean ± sample std over seeds, then (training FLOPs, "
            f"inference FLOPs) as multiples of dense training on the 1× schedule. Dense has its own "
            f"column, d = 1.")


EXPLORED_CAPTION = ("Exploration (in-time over-parameterisation rate, Liu et al. 2021): the fraction of the "
                    "masked weights active at least once during training, mean over seeds; static keeps its "
                    "density, and dense has none.")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def write_tables(header: list[str], rows: list[list[str]], groups: list[dict], root) -> tuple[Path, Path]:
    """ROOT/report.md (Table 2, then the exploration rates in its layout) and ROOT/report.csv
    (one numeric row per group)."""
    md_path, csv_path = Path(root) / "report.md", Path(root) / "report.csv"
    lines = [table_caption(groups), "", *markdown_table(header, rows), "", EXPLORED_CAPTION, "",
             *markdown_table(*table_rows(groups, format_explored))]
    write_text(md_path, "\n".join(lines) + "\n")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(groups)  # None (no FLOPs recorded) becomes an empty field
    write_text(csv_path, table.getvalue())
    return md_path, csv_path


def print_table(header: list[str], rows: list[list[str]], console,
                title: str = "Test accuracy (%) ± std over seeds (training, inference FLOPs ×dense)") -> None:
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)


# Figures. matplotlib's Agg canvas draws straight to a PNG: no screen needed, and no pyplot state,
# so a figure is freed with the function that made it and none is left open.

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


def plot_accuracy_vs_lr(groups: list[dict], path) -> Path | None:
    """The report's learning-rate study: test accuracy against lr (log axis), one line with a ±std
    band per (method, distribution, density, α, ΔT). None unless some setting has several lrs."""
    series: dict[str, list[dict]] = {}
    groups = [g for g in groups if g["lr"] is not None]  # a configuration that does not record it
    for group in sorted(groups, key=lambda g: (row_order(tuple(g[k] for k in ROW_KEYS)), g["lr"])):
        label = (f"{method_name(group['method'])}{DISTRIBUTION_SUFFIX.get(group['distribution'], '')} "
                 f"d={group['density']:g} α={group['drop_fraction']:g} ΔT={group['update_interval']}"
                 + (f" {group['origin']}" if group.get("origin") else ""))
        series.setdefault(label, []).append(group)
    if not any(len({g["lr"] for g in members}) > 1 for members in series.values()):
        return None
    figure, ax = new_axes()
    for i, (label, members) in enumerate(series.items()):
        plot_mean_and_band(ax, "lr", members, label, series_style(i))
    log_axis_at(ax, sorted({g["lr"] for g in groups}))
    ax.set(xlabel="learning rate (log scale)", ylabel="test accuracy (%)",
           title="Test accuracy against learning rate (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
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


def read_jsonl(path: Path) -> list:
    """The records of a JSON-lines file of a run; [] when it has none (older runs)."""
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as error:
        raise ValueError(f"{path} is not readable JSON lines ({error})") from None


def read_densities(run_path) -> list[dict]:
    """densities.jsonl: layer densities at epoch 0 and after every epoch; [] for older runs. A line
    that is not {"epoch": int, "densities": {layer: number}} is named in one line."""
    path = Path(run_path) / "densities.jsonl"
    records = read_jsonl(path)
    for i, r in enumerate(records, 1):
        if not (isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("densities"), dict)
                and all(is_number(v) for v in r["densities"].values())):
            raise ValueError(f"{path}: record {i} is not {{\"epoch\": int, \"densities\": {{layer: number}}}}")
    return records


def read_flops_history(run_path) -> list[tuple[int, float]]:
    """(step, forward FLOPs of the masks ×dense) after every epoch, from metrics.jsonl; [] for runs
    older than the record. A record whose step or ratio is not a number is named in one line."""
    path = Path(run_path) / "metrics.jsonl"
    points = []
    for i, r in enumerate(read_jsonl(path), 1):
        if not isinstance(r, dict) or "inference_flops_ratio" not in r:
            continue
        if not (isinstance(r.get("step"), int) and is_number(r["inference_flops_ratio"])):
            raise ValueError(f"{path}: record {i} has no integer step and numeric inference_flops_ratio")
        points.append((r["step"], r["inference_flops_ratio"]))
    return points


def run_title(run: dict) -> str:
    return f"{group_label(run)}, d = {run['density']:g}, seed {run['seed']}"


def plot_layer_densities(run: dict, path) -> Path | None:
    """Per-layer density of one run's final masks next to its initial allocation (epoch 0 of
    densities.jsonl, when the run has one). None when the summary lists no layers."""
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
    None when the run has fewer than two records (older runs have none)."""
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


# The whole report.

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


def make_report(root, console) -> dict:
    """Table 2 (printed, ROOT/report.md, ROOT/report.csv) and figures (ROOT/figures/) from every
    finished run under ROOT. Raises ValueError when there is none."""
    finished, unfinished = find_run_dirs(root)
    if not finished:
        raise ValueError(f"no finished runs (summary.json) under {root}")
    runs = collect_runs(root)
    groups = aggregate(runs)
    header, rows = table_rows(groups)
    print_table(header, rows, console)
    if any(g["explored"] is not None for g in groups):
        print_table(*table_rows(groups, format_explored), console,
                    title="Explored: fraction of the masked weights ever active (mean over seeds)")
    tables = list(write_tables(header, rows, groups, root))
    figures = report_figures(runs, groups, Path(root) / "figures")
    for path in tables + figures:
        console.print(f"wrote {path}", highlight=False)
    if unfinished:
        console.print(f"note: skipped {len(unfinished)} unfinished run(s) without summary.json: "
                      + ", ".join(str(p) for p in unfinished), highlight=False, soft_wrap=True)
    return {"runs": len(runs), "groups": len(groups), "unfinished": [str(p) for p in unfinished],
            "tables": tables, "figures": figures}
