"""`python rigl.py report ROOT`: the report's Table 2 and figures from finished run directories.

Report:  Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021: Table 2 (test
         accuracy mean ± std over seeds, with training and test FLOPs ×dense, rows = method and
         distribution, columns = density) and the accuracy-against-density and -FLOPs figures.
Input:   every folder under ROOT with config.json and summary.json (`python rigl.py train` or
         `sweep` wrote them), and densities.jsonl for the per-layer figures.
Output:  ROOT/report.md (the table, the exploration rates and the comparisons), ROOT/report.csv
         (one row per table cell), ROOT/comparisons.csv (each difference with its 95% interval and
         verdict, comparisons.py), ROOT/runs.csv (one row per run) and ROOT/figures/*.png.

Runs are pooled over seeds only when every other setting agrees; otherwise the report refuses and
names what differs. The figures are drawn by figures.py, the rows named by labels.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from rich.table import Table

from flops import NO_DISTRIBUTION
from rigl import CHANGES_EVERY_INTERVAL, DROP_AND_GROW, UNMASKED, SparsityConfig
from rigl_harness.comparisons import CONFIDENCE, compare, format_interval
from rigl_harness import published
from rigl_harness.figures import report_figures
from rigl_harness.labels import GROUP_KEYS, ROW_KEYS, format_ratio, group_label, method_name, row_order, several_tasks
from rigl_harness.runs import may_differ, read_config, read_json, write_text
from train import RECIPES, TrainConfig, resolve_recipe


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
              "drop_fraction": alpha, "update_interval": interval, "lr": train.get("lr"), "variant": variant,
              "val_size": train.get("val_size"), "full_length": full_length(train)}
    # --densities-from's layer densities come from each seed's own source run; set by hand, they must agree
    per_seed = ("layer_densities",) if (derived or {}).get("densities_from") else ()
    settings = {f"{name}.{key}": value for name, section in (("train", train), ("sparsity", sparse))
                for key, value in section.items()
                if key not in may_differ(train) + ("seed",) + SOURCES + per_seed}
    settings.update({f"sparsity.{key}": record[key] for key in ("distribution", "density", "drop_fraction",
                                                               "update_interval")})
    return {**record, "settings": settings}


def full_length(train: dict) -> bool:
    """A run of its dataset's recipe at full length: the recipe's network, epochs and batch on every
    training and test image; only such runs are held against the report's numbers."""
    recipe = RECIPES.get(train["dataset"], {})
    return (train.get("model") == recipe.get("model") and train.get("epochs") == recipe.get("epochs")
            and train.get("batch_size") == recipe.get("batch_size") and not train.get("train_subset")
            and not train.get("test_subset"))


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
            "train_flops_ratio": summary["train_flops_ratio"], "inference_flops_ratio": summary["inference_flops_ratio"],
            "explored": summary["explored"],  # None for dense and Small-Dense
            "epochs": summary["epochs"], "steps": summary["steps"], "layers": summary["layers"],
            "densities": read_densities(path), "flops_history": read_flops_history(path)}


SUMMARY_NUMBERS = {"final_test_acc": True, "final_val_acc": False, "train_flops_ratio": True,
                   "inference_flops_ratio": True, "explored": False, "epochs": True, "steps": True}
"""The numbers of summary.json that the report reads, and whether each is required (else null is
allowed: no validation split, or a method without masks, which explores nothing)."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_summary(path: Path) -> dict:
    """summary.json, its numbers and its layers checked; a bad one is named in one line."""
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} is not a run's summary (not a JSON object)")
    for key, required in SUMMARY_NUMBERS.items():
        if key not in summary:
            raise ValueError(f"{path} is not a run's summary: it has no {key}")
        value = summary[key]
        if not is_number(value) and (required or value is not None):
            raise ValueError(f"{path} is not a run's summary: {key} is {value!r}, not a finite number")
    for key in ("final_test_acc", "final_val_acc"):
        if summary[key] is not None and not 0 <= summary[key] <= 100:
            raise ValueError(f"{path} is not a run's summary: {key} is {summary[key]!r}, not a percentage")
    layers = summary.get("layers")
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
                       "val_size": members[0]["val_size"], "full_length": members[0]["full_length"],
                       "accs": accs, "test_mean": statistics.fmean(accs),
                       "val_mean": mean_or_none([r["val_acc"] for r in members]),
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


def format_cell(group: dict) -> str:
    """"92.41 ± 0.06 (0.35×, 0.35×)": test accuracy over seeds, (training, inference) FLOPs ×dense;
    one seed has no spread, and shows none: "92.41 (0.35×, 0.35×)"."""
    spread = f" ± {group['test_std']:.2f}" if group["n"] > 1 else ""
    return (f"{group['test_mean']:.2f}{spread} "
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
               "inference_flops_ratio", "explored", "full_length", "published_item", "published_mean", "published_std",
               "paper_mean", "difference", "low", "high", "verdict", "published_note")


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


COMPARISON_COLUMNS = ("kind", "dataset", "model", "density", "first", "second", "first_mean", "first_n",
                      "second_mean", "second_n", "difference", "low", "high", "verdict", "best")
RUN_COLUMNS = ("method", "distribution", "density", "multiplier", "seed", "dataset", "model", "steps", "epochs",
               "test_acc", "val_acc", "drop_fraction", "update_interval", "lr", "origin", "train_flops_ratio",
               "inference_flops_ratio", "explored", "path")
"""runs.csv: one row per finished run, its path relative to ROOT."""

PUBLISHED_CAPTION = ("Ours beside the report's published value of the same row (rigl_harness/published.csv: "
                     "the report's Table 1 for CIFAR-10 on all 50,000 images, else its Table 2 or 3, then Table 5 "
                     "and Figure 4), and on Table 1 the paper's value. At full length: ours minus the report's "
                     "with a 95% Welch interval (the report's std over 3 seeds; Table 1 prints none, so there "
                     "the interval is our seeds' alone).")
SHORTER_CAPTION = ("These runs are shorter or smaller than the report's (not its recipe at full length, or on synthetic "
                   "data in its dataset's place): its numbers "
                   "are of another budget, shown for orientation only, and no difference is drawn.")


def published_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per group that the report publishes: ours, the report's (item), the paper's on
    Table 1, and at full length the difference with its interval and verdict."""
    header = ["row", "d", "ours: mean ± std (seeds)", "report (item)", "paper", "ours − report [95% CI]", "verdict"]
    rows = []
    for g in sorted((g for g in groups if g.get("published_item")), key=lambda g: (row_order(tuple(
            g[k] for k in ROW_KEYS)), g["density"])):
        theirs = f"{g['published_mean']:g}" + (f" ± {g['published_std']:g}" if g["published_std"] is not None else "")
        spread = f" ± {g['test_std']:.2f}" if g["n"] > 1 else ""
        difference = "" if g.get("difference") is None else format_interval(g)
        rows.append([group_label(g), f"{g['density']:g}", f"{g['test_mean']:.2f}{spread} ({g['n']})",
                     f"{theirs} ({g['published_item']})", "" if g.get("paper_mean") is None else f"{g['paper_mean']:g}",
                     difference, g.get("verdict") or ("one seed: no interval" if g["full_length"] else "other budget")])
    return header, rows


COMPARISON_CAPTION = (f"Comparisons of last-epoch test accuracy (%): A's mean minus B's over seeds, with its "
                      f"{CONFIDENCE:.0%} confidence interval (Welch's t, unequal variances). The verdict names "
                      f"the better row only where the interval excludes 0. A grid point marked \"best by "
                      f"validation\" has the best mean validation accuracy of its density's (α, ΔT) grid: the one "
                      f"chosen without the test set.")


def comparison_table(comparisons: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per comparison: A, B, density, both means with their seeds, A − B [interval], verdict."""
    header = ["A", "B", "d", "A: mean (seeds)", "B: mean (seeds)", f"A − B [{CONFIDENCE:.0%} CI]", "verdict"]
    rows = [[c["first"] + (", best by validation" if c["best"] else ""), c["second"], f"{c['density']:g}",
             f"{c['first_mean']:.2f} ({c['first_n']})", f"{c['second_mean']:.2f} ({c['second_n']})",
             format_interval(c), c["verdict"]] for c in comparisons]
    return header, rows


def csv_text(records: list[dict], columns: tuple[str, ...]) -> str:
    """Records as CSV with these columns; None becomes an empty field."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return table.getvalue()


def write_tables(header: list[str], rows: list[list[str]], groups: list[dict], comparisons: list[dict],
                 runs: list[dict], root) -> list[Path]:
    """ROOT/report.md (Table 2, the exploration rates in its layout, the comparisons), ROOT/report.csv
    (one numeric row per group), ROOT/comparisons.csv and ROOT/runs.csv (one row per run)."""
    root = Path(root)
    lines = [table_caption(groups), "", *markdown_table(header, rows), "", EXPLORED_CAPTION, "",
             *markdown_table(*table_rows(groups, format_explored))]
    beside = published_table(groups)
    if beside[1]:
        shorter = [] if all(g["full_length"] for g in groups) else [SHORTER_CAPTION]
        lines += ["", PUBLISHED_CAPTION, *shorter, "", *markdown_table(*beside)]
    if comparisons:
        lines += ["", COMPARISON_CAPTION, "", *markdown_table(*comparison_table(comparisons))]
    paths = [root / name for name in ("report.md", "report.csv", "comparisons.csv", "runs.csv")]
    write_text(paths[0], "\n".join(lines) + "\n")
    write_text(paths[1], csv_text(groups, CSV_COLUMNS))
    write_text(paths[2], csv_text(comparisons, COMPARISON_COLUMNS))
    write_text(paths[3], csv_text([{**r, "path": str(Path(r["path"]).relative_to(root))} for r in runs],
                                  RUN_COLUMNS))
    return paths


def print_table(header: list[str], rows: list[list[str]], console,
                title: str = "Test accuracy (%) ± std over seeds (training, inference FLOPs ×dense)") -> None:
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def read_jsonl(path: Path) -> list:
    """The records of a JSON-lines file of a finished run, which writes it before its summary.json;
    a missing or unreadable one is named in one line."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: a finished run writes it before summary.json") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON lines ({error})") from None


def read_densities(run_path) -> list[dict]:
    """densities.jsonl: layer densities at epoch 0 and after every epoch. A line that is not
    {"epoch": int, "densities": {layer: number}} is named in one line."""
    path = Path(run_path) / "densities.jsonl"
    records = read_jsonl(path)
    for i, r in enumerate(records, 1):
        if not (isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("densities"), dict)
                and all(is_number(v) for v in r["densities"].values())):
            raise ValueError(f"{path}: record {i} is not {{\"epoch\": int, \"densities\": {{layer: number}}}}")
    return records


def read_flops_history(run_path) -> list[tuple[int, float]]:
    """(step, forward FLOPs of the masks ×dense) after every epoch, from metrics.jsonl. A record
    whose step or ratio is not a number is named in one line."""
    path = Path(run_path) / "metrics.jsonl"
    points = []
    for i, r in enumerate(read_jsonl(path), 1):
        if not (isinstance(r, dict) and isinstance(r.get("step"), int) and is_number(r.get("inference_flops_ratio"))):
            raise ValueError(f"{path}: record {i} has no integer step and numeric inference_flops_ratio")
        points.append((r["step"], r["inference_flops_ratio"]))
    return points


def make_report(root, console, reference_interval: int = SparsityConfig.update_interval,
                published_dataset: str | None = None) -> dict:
    """Table 2 (printed, ROOT/report.md, ROOT/report.csv), the comparisons (printed, in report.md and
    ROOT/comparisons.csv), ROOT/runs.csv and figures (ROOT/figures/) from every finished run under
    ROOT; grid points of α and ΔT are compared with α = 0.3 and `reference_interval`; runs on
    synthetic data are held against the published numbers of `published_dataset`. Raises
    ValueError when there is no finished run."""
    finished, unfinished = find_run_dirs(root)
    if not finished:
        raise ValueError(f"no finished runs (summary.json) under {root}")
    runs = collect_runs(root)
    groups = aggregate(runs)
    cells = published.read()
    for group in groups:
        stand_in = published_dataset if group["dataset"] == "synthetic" and published_dataset else group["dataset"]
        group.update(published.held_against({**group, "dataset": stand_in}, cells, reference_interval))
    header, rows = table_rows(groups)
    print_table(header, rows, console)
    beside = published_table(groups)
    if beside[1]:
        print_table(*beside, console, title="Ours beside the report's published value" + (
            "" if all(g["full_length"] for g in groups) else " (another budget: the report's runs are full length)"))
    if any(g["explored"] is not None for g in groups):
        print_table(*table_rows(groups, format_explored), console,
                    title="Explored: fraction of the masked weights ever active (mean over seeds)")
    comparisons = compare(groups, reference_interval)
    if comparisons:
        print_table(*comparison_table(comparisons), console,
                    title=f"A − B: last-epoch test accuracy, {CONFIDENCE:.0%} interval (Welch)")
    tables = write_tables(header, rows, groups, comparisons, runs, root)
    figures = report_figures(runs, groups, Path(root) / "figures")
    for path in tables + figures:
        console.print(f"wrote {path}", highlight=False)
    if unfinished:
        console.print(f"note: skipped {len(unfinished)} unfinished run(s) without summary.json: "
                      + ", ".join(str(p) for p in unfinished), highlight=False, soft_wrap=True)
    return {"runs": len(runs), "groups": len(groups), "comparisons": comparisons,
            "unfinished": [str(p) for p in unfinished],
            "tables": tables, "figures": figures}
