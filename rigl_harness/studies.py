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

RUN_HOURS = {"cifar10": 2.0, "cifar100": 16.0}
"""GPU-hours of one 250-epoch run at 1×: the report's GTX 1080 time for CIFAR-10 WRN-22-2 (about
2 h), and for CIFAR-100 ResNet-50 that time × its forward FLOPs over WRN-22-2's (2.59e9 / 3.15e8,
about 8): an estimate, not a measurement."""


@dataclass(frozen=True)
class Scale:
    """How big every run of a study is."""

    options: tuple[str, ...]
    """`train` options added to every sweep, tune and train of the study, after its own (so they win)."""
    seeds: tuple[int, ...]
    """The seeds of every run."""
    update_interval: int | None
    """ΔT of every run that does not set its own; None = the paper's 100."""
    trials: int
    """Trials of every tune study."""


SCALES = {
    "full": Scale((), (0, 1, 2), None, 15),
    "cpu": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
                  "--batch-size", "64", "--epochs", "3", "--workers", "0"), (0, 1), 4, 3),
    "smoke": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "256", "--val-size", "64",
                    "--batch-size", "64", "--epochs", "1", "--workers", "0"), (0,), 1, 2),
}
"""full: the report's recipes and seeds. cpu: WRN-10-1 on 512 synthetic images for 3 epochs (24
steps, ΔT = 4), two seeds, minutes per study on a laptop. smoke: one seed, 4 steps, what the tests run."""


@dataclass(frozen=True)
class Study:
    """One table or figure of the report and the commands that reproduce it."""

    item: str
    """The report's table or figure, in its words."""
    steps: tuple[tuple[str, ...], ...]
    """Commands after `python rigl.py`, with {root} for ROOT, {seeds} for the scale's seeds and,
    in a step that starts with "each-seed", one command per seed with {seed}."""
    runs: int
    """Training runs at full length (3 seeds)."""
    gpu_hours: float
    """Estimated GPU-hours at full length (RUN_HOURS)."""
    outputs: tuple[str, ...]
    """The files under ROOT (glob patterns) where the table or figure is drawn."""


def sweep(folder: str, *grid: str) -> tuple[str, ...]:
    return ("sweep", f"{{root}}/{folder}", *grid, "--seeds", "{seeds}")


def tune(folder: str, *options: str) -> tuple[str, ...]:
    return ("tune", f"{{root}}/{folder}", *options, "--seeds", "{seeds}")


def report(folder: str) -> tuple[str, ...]:
    return ("report", f"{{root}}/{folder}")


def restart(distribution: str, density: str) -> tuple[str, ...]:
    """Table 5's restart: RigL from the final masks of RigL-SM at the same distribution, density and
    seed, the sweep's run directory ({dt}: the sweep names ΔT when it is not the paper's)."""
    source = f"{{root}}/redistribution/rigl-sm-{distribution}-d{density}-x1.0{{dt}}-s{{seed}}"
    return ("each-seed", "train", "--method", "rigl", "--distribution", distribution, "--density", density,
            "--masks-from", source, "--seed", "{seed}",
            "--out", f"{{root}}/redistribution/restart/rigl-from-sm-{distribution}-d{density}-s{{seed}}")


REDISTRIBUTION = sweep("redistribution", "--methods", "rigl,rigl-sg,rigl-sm", "--distributions", "uniform,erk",
                       "--densities", "0.1,0.2")
LR_PAIRS = (("0.3", "100"), ("0.4", "200"), ("0.4", "500"), ("0.5", "750"))
"""(α, ΔT) of the report's learning-rate figure."""

STUDIES = {
    "table1": Study(
        "Table 1: RigL (ERK) and dense on all 50,000 training images (no validation split)",
        (sweep("table1", "--methods", "dense,rigl", "--distributions", "erk", "--densities", "0.1,0.2,0.5",
               "--val-size", "0"), report("table1")),
        12, 24, ("table1/report.md",)),
    "table2": Study(
        "Table 2: CIFAR-10 WRN-22-2, every method at d = 0.1 and 0.2",
        (sweep("table2", "--methods", "dense,small-dense,static,set,rigl,snfs,pruning", "--distributions", "uniform",
               "--densities", "0.1,0.2"),
         sweep("table2", "--methods", "set,rigl", "--distributions", "erk", "--densities", "0.1,0.2"),
         sweep("table2", "--methods", "rigl", "--multipliers", "2", "--distributions", "uniform,erk",
               "--densities", "0.1,0.2"),
         report("table2")),
        63, 150, ("table2/report.md", "table2/figures/accuracy_vs_density.png",
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
        39, 816, ("table3/report.md",)),
    "table4": Study(
        "Table 4 and the tuning contour: α and ΔT tuned by TPE per distribution at d = 0.1",
        (tune("table4", "--distribution", "uniform", "--density", "0.1"),
         tune("table4", "--distribution", "erk", "--density", "0.1")),
        90, 180, ("table4/tune.md", "table4/figures/tune-*-search.png")),
    "lr": Study(
        "Learning-rate figure: RigL (ERK) d = 0.1 against lr, for four (α, ΔT)",
        tuple(sweep("lr", "--methods", "rigl", "--distributions", "erk", "--densities", "0.1",
                    "--lrs", "0.1,0.05,0.01,0.005", "--drop-fractions", alpha, "--update-intervals", interval)
              for alpha, interval in LR_PAIRS) + (report("lr"),),
        48, 96, ("lr/figures/accuracy_vs_lr.png",)),
    "table5": Study(
        "Table 5: redistribution (RigL-SG, RigL-SM) and RigL restarted from RigL-SM's final masks",
        (REDISTRIBUTION,) + tuple(restart(dist, d) for dist in ("uniform", "erk") for d in ("0.1", "0.2"))
        + (report("redistribution"),),
        48, 96, ("redistribution/report.md",)),
    "density-evolution": Study(
        "Density distribution evolution: forward FLOPs over training, final layer densities side by side",
        (REDISTRIBUTION, report("redistribution")),
        36, 72, ("redistribution/figures/flops_over_training_*.png",)),
    "fixed-flops": Study(
        "Fixed FLOPs vs fixed parameters: uniform against ERK at equal density and at uniform's FLOPs",
        (sweep("distributions/fixed-parameters", "--methods", "rigl", "--distributions", "uniform,erk",
               "--densities", "0.1,0.2,0.5"),
         sweep("distributions/fixed-flops", "--methods", "rigl", "--distributions", "erk",
               "--densities", "0.1,0.2,0.5", "--match-flops", "uniform"),
         report("distributions")),
        27, 54, ("distributions/figures/distributions_at_equal_flops.png",
                 "distributions/figures/accuracy_vs_flops.png")),
    "rigl-struct": Study(
        "Supplement, Dynamic Structured Sparsity: RigL-struct (kernel-level masks) beside RigL",
        (sweep("struct", "--methods", "rigl,rigl-struct", "--distributions", "uniform,er", "--densities", "0.1,0.2"),
         report("struct")),
        24, 48, ("struct/report.md",)),
}
"""Every table and figure of the report that a command reproduces, in the report's order."""


def scaled(step: tuple[str, ...], scale: Scale) -> tuple[str, ...]:
    """One command at a scale: the scale's ΔT where the command sets none, its trials for tune, and
    its options last."""
    command = step[0]
    extra = []
    if scale.update_interval is not None:
        if command == "sweep" and "--update-intervals" not in step:
            extra += ["--update-intervals", str(scale.update_interval)]
        if command == "train" and "--update-interval" not in step:
            extra += ["--update-interval", str(scale.update_interval)]
        if command == "tune":  # ΔT searched between the scale's and 5 times it
            low = scale.update_interval
            extra += ["--interval-range", f"{low},{5 * low},{low}"]
    if command == "tune":
        extra += ["--trials", str(scale.trials)]
    return step + tuple(extra) + (scale.options if command != "report" else ())


def commands(study: Study, scale: Scale, root: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The study's commands at `scale` under `root`, each ready for the command line; `extra`
    options go to every sweep, tune and train, after the scale's."""
    found = []
    for step in study.steps:
        each_seed = step[0] == "each-seed"
        step = scaled(step[1:] if each_seed else step, scale)
        step += extra if step[0] != "report" else ()
        seeds = ",".join(map(str, scale.seeds))
        for seed in scale.seeds if each_seed else (None,):
            found.append([part.format(root=root, seeds=seeds, seed=seed, dt=interval_suffix(scale))
                          for part in step])
    return found


def interval_suffix(scale: Scale) -> str:
    """How a sweep's run directory names the scale's ΔT (sweep.cell_name): not at all when it is the paper's."""
    return "" if scale.update_interval in (None, SparsityConfig.update_interval) else f"-dt{scale.update_interval}"
