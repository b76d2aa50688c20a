"""The report's tables and figures as studies: the commands that reproduce each, at three sizes.

Report: Sundar & Dwaraknath, "[Re] Rigging the Lottery", ReScience C 7(2), 2021. Each study is the
`sweep`, `tune`, `train` and `report` commands of one table or figure, written once here; `python
rigl.py reproduce STUDY ROOT` runs them (finished runs are skipped, so a stopped study continues),
and docs/report-map.md lists them. A scale sets how big the runs are: the report's full length, a
CPU-sized version on synthetic data, or the smallest one the tests run.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigl import SparsityConfig
from rigl_harness.sweep import AXES, cells, parse_grid
from train import TrainConfig

RUN_HOURS = {"cifar10": 2.0, "cifar100": 16.0}
"""GPU-hours of one 250-epoch run at 1×: the report's GTX 1080 time for CIFAR-10 WRN-22-2 (about
2 h), and for CIFAR-100 ResNet-50 that time × its forward FLOPs over WRN-22-2's (2.59e9 / 3.15e8,
about 8): an estimate, not a measurement."""


@dataclass(frozen=True)
class Scale:
    """How big every run of a study is."""

    options: tuple[str, ...]
    """`train` options added to every sweep, tune and train of the study, after its own (so that
    its --dataset and --model win); an option the study sets itself keeps the study's value."""
    seeds: tuple[int, ...]
    """The seeds of every run."""
    update_interval: int | None
    """ΔT of every run that does not set its own; None = the paper's 100."""
    trials: int
    """Trials of every tune study."""
    values: dict[str, int] | None = None
    """At most this many values of these grid options (the first ones); a restart from a run the
    scale leaves out is left out too. None: every value."""


SCALES = {
    "full": Scale((), (0, 1, 2), None, 15),
    "cpu": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
                  "--batch-size", "64", "--epochs", "3", "--workers", "0"), (0, 1), 4, 3),
    "smoke": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "64", "--val-size", "32",
                    "--test-subset", "64", "--batch-size", "16", "--epochs", "1", "--workers", "0"), (0,), 1, 2,
                   {"--densities": 1, "--lrs": 2}),
}
"""full: the report's recipes and seeds. cpu: WRN-10-1 on 512 synthetic images for 3 epochs (24
steps, ΔT = 4), two seeds, minutes per study on a laptop. smoke: one seed, 4 steps of 16 images, 64
test images, the first density and two learning rates of each grid: every command of every study,
with all its options, at the least cost (what the tests run)."""


@dataclass(frozen=True)
class Study:
    """One table or figure of the report and the commands that reproduce it."""

    item: str
    """The report's table or figure, in its words."""
    steps: tuple[tuple[str, ...], ...]
    """Commands after `python rigl.py`, with {root} for ROOT, {seeds} for the scale's seeds and,
    in a step that starts with "each-seed", one command per seed with {seed}."""
    outputs: tuple[str, ...]
    """The files under ROOT (glob patterns) where the table or figure is drawn."""


def sweep(folder: str, *grid: str) -> tuple[str, ...]:
    return ("sweep", f"{{root}}/{folder}", *grid, "--seeds", "{seeds}")


def tune(folder: str, *options: str) -> tuple[str, ...]:
    return ("tune", f"{{root}}/{folder}", *options, "--seeds", "{seeds}")


def report(folder: str) -> tuple[str, ...]:
    return ("report", f"{{root}}/{folder}")


RESTARTS = {"masks": ("--masks-from", "rigl-from-sm"), "densities": ("--densities-from", "rigl-at-sm-densities")}
"""Table 5's two readings of "restarted with RigL-SM's final distribution", both of which the report's
run scripts ran (RigL-reinit and RigL-reinit-dist): its exact final masks (ours), or fresh random
masks at its final per-layer densities. Each: the train option and the run directory's prefix."""


def restart(distribution: str, density: str, reading: str) -> tuple[str, ...]:
    """Table 5's restart: RigL from RigL-SM's final masks or per-layer densities (`reading`), at the
    same distribution, density and seed; RigL-SM's is the sweep's run directory ({dt}: the sweep
    names ΔT when it is not the paper's)."""
    option, prefix = RESTARTS[reading]
    source = f"{{root}}/redistribution/rigl-sm-{distribution}-d{density}-x1.0{{dt}}-s{{seed}}"
    return ("each-seed", "train", "--method", "rigl", "--distribution", distribution, "--density", density,
            option, source, "--seed", "{seed}",
            "--out", f"{{root}}/redistribution/restart/{prefix}-{distribution}-d{density}-s{{seed}}")


REDISTRIBUTION = sweep("redistribution", "--methods", "rigl,rigl-sg,rigl-sm", "--distributions", "uniform,erk",
                       "--densities", "0.1,0.2")
LR_PAIRS = (("0.3", "100"), ("0.4", "200"), ("0.4", "500"), ("0.5", "750"))
"""(α, ΔT) of the report's learning-rate figure."""

STUDIES = {
    "table1": Study(
        "Table 1: RigL (ERK) and dense on all 50,000 training images (no validation split)",
        (sweep("table1", "--methods", "dense,rigl", "--distributions", "erk", "--densities", "0.1,0.2,0.5",
               "--val-size", "0"), report("table1")),
        ("table1/report.md",)),
    "table2": Study(
        "Table 2: CIFAR-10 WRN-22-2, every method at d = 0.1 and 0.2",
        (sweep("table2", "--methods", "dense,small-dense,static,set,rigl,snfs,pruning", "--distributions", "uniform",
               "--densities", "0.1,0.2"),
         sweep("table2", "--methods", "set,rigl", "--distributions", "erk", "--densities", "0.1,0.2"),
         sweep("table2", "--methods", "rigl", "--multipliers", "2", "--distributions", "uniform,erk",
               "--densities", "0.1,0.2"),
         report("table2")),
        ("table2/report.md", "table2/figures/accuracy_vs_density.png",
                  "table2/figures/accuracy_vs_flops.png")),
    "table3": Study(
        "Table 3: CIFAR-100 ResNet-50 at d = 0.1 and 0.2",
        (sweep("table3", "--methods", "dense,static,rigl,snfs,pruning", "--distributions", "uniform",
               "--densities", "0.1,0.2", "--dataset", "cifar100"),
         sweep("table3", "--methods", "rigl", "--distributions", "erk", "--densities", "0.1,0.2",
               "--dataset", "cifar100"),
         sweep("table3", "--methods", "rigl", "--multipliers", "3", "--distributions", "uniform",
               "--densities", "0.1,0.2", "--dataset", "cifar100"),
         report("table3")),
        ("table3/report.md",)),
    "table4": Study(
        "Table 4 and the tuning contour: α and ΔT tuned by TPE per distribution at d = 0.1",
        (tune("table4", "--distribution", "uniform", "--density", "0.1"),
         tune("table4", "--distribution", "erk", "--density", "0.1")),
        ("table4/tune.md", "table4/figures/tune-*-search.png")),
    "lr": Study(
        "Learning-rate figure: RigL (ERK) d = 0.1 against lr, for four (α, ΔT)",
        tuple(sweep("lr", "--methods", "rigl", "--distributions", "erk", "--densities", "0.1",
                    "--lrs", "0.1,0.05,0.01,0.005", "--drop-fractions", alpha, "--update-intervals", interval)
              for alpha, interval in LR_PAIRS) + (report("lr"),),
        ("lr/figures/accuracy_vs_lr.png",)),
    "table5": Study(
        "Table 5: redistribution (RigL-SG, RigL-SM) and RigL restarted from RigL-SM's final masks or densities",
        (REDISTRIBUTION,) + tuple(restart(dist, d, reading) for reading in RESTARTS
                                  for dist in ("uniform", "erk") for d in ("0.1", "0.2"))
        + (report("redistribution"),),
        ("redistribution/report.md",)),
    "density-evolution": Study(
        "Density distribution evolution: forward FLOPs over training, final layer densities side by side",
        (REDISTRIBUTION, report("redistribution")),
        ("redistribution/figures/flops_over_training_*.png",)),
    "fixed-flops": Study(
        "Fixed FLOPs vs fixed parameters: uniform against ERK at equal density and at uniform's FLOPs, "
        "CIFAR-10 WRN-22-2 and CIFAR-100 ResNet-50",
        (sweep("distributions/fixed-parameters", "--methods", "rigl", "--distributions", "uniform,erk",
               "--densities", "0.1,0.2,0.5"),
         sweep("distributions/fixed-flops", "--methods", "rigl", "--distributions", "erk",
               "--densities", "0.1,0.2,0.5", "--match-flops", "uniform"),
         report("distributions"),
         sweep("distributions-cifar100/uniform", "--methods", "rigl", "--distributions", "uniform",
               "--densities", "0.1,0.2,0.5", "--dataset", "cifar100"),
         sweep("distributions-cifar100/fixed-flops", "--methods", "rigl", "--distributions", "erk",
               "--densities", "0.1,0.2,0.5", "--match-flops", "uniform", "--dataset", "cifar100"),
         report("distributions-cifar100")),
        ("distributions/figures/distributions_at_equal_flops.png",
         "distributions/figures/accuracy_vs_flops.png",
         "distributions-cifar100/figures/distributions_at_equal_flops.png")),
    "rigl-struct": Study(
        "Supplement, Dynamic Structured Sparsity: RigL-struct (kernel-level masks) beside RigL",
        (sweep("struct", "--methods", "rigl,rigl-struct", "--distributions", "uniform,er", "--densities", "0.1,0.2"),
         report("struct")),
        ("struct/report.md",)),
}
"""Every table and figure of the report that a command reproduces, in the report's order."""


def scaled(step: tuple[str, ...], scale: Scale) -> tuple[str, ...]:
    """One command at a scale: the scale's values of its grid, the scale's ΔT where the command sets
    none, its trials for tune, and its options last."""
    command, step = step[0], shortened_intervals(trimmed(step, scale), scale)
    extra = []
    if scale.update_interval is not None:
        if command == "sweep" and "--update-intervals" not in step:
            extra += ["--update-intervals", str(scale.update_interval)]
        if command == "train" and "--update-interval" not in step:
            extra += ["--update-interval", str(scale.update_interval)]
        if command == "tune":  # ΔT searched from the scale's up to the paper's, which tune compares with
            low = scale.update_interval
            extra += ["--interval-range", f"{low},{SparsityConfig.update_interval},{low}"]
    if command == "tune":
        extra += ["--trials", str(scale.trials)]
    return step + tuple(extra) + (own_options(scale, step) if command != "report" else ())


def own_options(scale: Scale, step: tuple[str, ...]) -> tuple[str, ...]:
    """The scale's options but those the study sets itself (Table 1's --val-size 0), except the
    dataset and model, which a scale replaces to be CPU-sized."""
    given = set(step)
    pairs = zip(scale.options[::2], scale.options[1::2])
    return tuple(part for option, value in pairs if option in SCALE_TASK or option not in given
                 for part in (option, value))


SCALE_TASK = ("--dataset", "--model")
"""The options a scale sets even where a study sets them: the network and data it trains on."""


def shortened_intervals(step: tuple[str, ...], scale: Scale) -> tuple[str, ...]:
    """A study's own ΔT values in proportion to the scale's runs: ΔT · scale ΔT / 100 (at least 1),
    so that the learning-rate figure's four (α, ΔT) pairs still differ in a 24-step run."""
    if scale.update_interval is None:
        return step
    ratio = scale.update_interval / SparsityConfig.update_interval
    return tuple(",".join(str(max(1, round(int(v) * ratio))) for v in value.split(","))
                 if option == "--update-intervals" else value for option, value in zip(("",) + step, step))


def trimmed(step: tuple[str, ...], scale: Scale) -> tuple[str, ...]:
    """The step with at most scale.values of each grid option's comma-separated values."""
    limits = scale.values or {}
    return tuple(",".join(value.split(",")[:limits[option]]) if option in limits else value
                 for option, value in zip(("",) + step, step))


def left_out(step: tuple[str, ...], study: Study, scale: Scale) -> bool:
    """A restart (an each-seed train) at a density that the scale leaves out of every sweep."""
    if step[0] != "each-seed" or not scale.values:
        return False
    kept = {d for other in study.steps if other[0] == "sweep"
            for d in option_values(other)["--densities"].split(",")[:scale.values["--densities"]]}
    return option_values(step)["--density"] not in kept


def commands(study: Study, scale: Scale, root: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The study's commands at `scale` under `root`, each ready for the command line; `extra`
    options go to every sweep, tune and train, after the scale's."""
    found = []
    for step in study.steps:
        if left_out(step, study, scale):
            continue
        each_seed = step[0] == "each-seed"
        step = scaled(step[1:] if each_seed else step, scale)
        step += extra if step[0] != "report" else ()
        seeds = ",".join(map(str, scale.seeds))
        for seed in scale.seeds if each_seed else (None,):
            found.append([part.format(root=root, seeds=seeds, seed=seed, dt=interval_suffix(scale))
                          for part in step])
    return found


def full_runs(study: Study) -> list[tuple[str, float]]:
    """(dataset, multiplier) of every training run of the study at full length, each once."""
    found = []
    for step in commands(study, SCALES["full"], "ROOT"):
        options = option_values(step)
        dataset = options.get("--dataset", TrainConfig.dataset)
        if step[0] == "sweep":
            grid = parse_grid({axis: options.get(f"--{axis.replace('_', '-')}", default_of(field))
                               for axis, (field, _) in AXES.items()})
            found += [(dataset, cell["multiplier"]) for cell in cells(grid)]
        elif step[0] == "tune":
            found += [(dataset, 1.0)] * (int(options["--trials"]) * len(options["--seeds"].split(",")))
        elif step[0] == "train":
            found.append((dataset, float(options.get("--multiplier", TrainConfig.multiplier))))
    return found


def option_values(command) -> dict[str, str]:
    """A study command's options and their values (every option of a study takes one)."""
    start = next((i for i, part in enumerate(command) if part.startswith("--")), len(command))
    return dict(zip(command[start::2], command[start + 1::2]))


def default_of(field: str) -> str:
    """A sweep axis's value when a study does not set it: its configuration field's default."""
    if field == "lr":
        return ""  # the dataset's recipe
    return str(getattr(SparsityConfig, field, None) or getattr(TrainConfig, field))


def gpu_hours(study: Study) -> float:
    """GPU-hours of the study at full length, at RUN_HOURS per run and 1× schedule."""
    return sum(RUN_HOURS[dataset] * multiplier for dataset, multiplier in full_runs(study))


def interval_suffix(scale: Scale) -> str:
    """How a sweep's run directory names the scale's ΔT (sweep.cell_name): not at all when it is the paper's."""
    return "" if scale.update_interval in (None, SparsityConfig.update_interval) else f"-dt{scale.update_interval}"
