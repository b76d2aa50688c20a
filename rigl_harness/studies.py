"""The report's tables and figures as studies: typed steps, and the commands that run them at three sizes.

Report: Sundar & Dwaraknath, "[Re] Rigging the Lottery", ReScience C 7(2), 2021. Each study is the
steps of one table or figure, written once here as typed steps (Sweep, Tune, Restart, Report);
each step prints the `sweep`, `tune`, `train` or `report` command that runs it. `python rigl.py
reproduce STUDY ROOT` runs them (finished runs are skipped, so a stopped study continues), and
docs/report-map.md lists them. A scale sets how big the runs are: the report's full length, a
CPU-sized version on synthetic data, or the smallest one the tests run.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigl import SparsityConfig
from rigl_harness.runs import run_name
from rigl_harness.sweep import AXES, cells, parse_grid, varied_fields
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
    """At most this many values of these grid axes (the first ones); a restart from a run the
    scale leaves out is left out too. None: every value."""


SCALES = {
    "full": Scale((), (0, 1, 2), None, 15),
    "cpu": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
                  "--batch-size", "64", "--epochs", "3", "--workers", "0"), (0, 1), 4, 3),
    "smoke": Scale(("--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "64", "--val-size", "32",
                    "--test-subset", "64", "--batch-size", "16", "--epochs", "1", "--workers", "0"), (0,), 1, 2,
                   {"densities": 1, "lrs": 2}),
    "laptop": Scale(("--model", "wrn-10-1", "--train-subset", "33000", "--val-size", "2000", "--epochs", "2",
                     "--workers", "0"), (0, 1, 2), 25, 6),
}
"""full: the report's recipes and seeds. laptop: WRN-10-1 on 33,000 real training images for 2 epochs
(516 steps, ΔT = 25, so 15 mask updates before T_end), 2,000 others held out for validation, the
whole test set, three seeds: about 4 minutes a run on one core of a laptop, the findings study's size.
cpu: WRN-10-1 on 512 synthetic images for 3 epochs (24 steps, ΔT = 4), two seeds, minutes per study
on a laptop. smoke: one seed, 4 steps of 16 images, 64
test images, the first density and two learning rates of each grid: every command of every study,
with all its options, at the least cost (what the tests run)."""


Options = tuple[tuple[str, str], ...]
"""A step's options in the order its command prints them: (field, value), e.g. ("densities", "0.1,0.2")."""


def flags(options: Options) -> tuple[str, ...]:
    """Options as the command line writes them: ("--densities", "0.1,0.2", ...)."""
    return tuple(part for field, value in options for part in (f"--{field.replace('_', '-')}", value))


def seeds_of(scale: Scale) -> str:
    return ",".join(map(str, scale.seeds))


def own_options(scale: Scale, given: tuple[str, ...]) -> tuple[str, ...]:
    """The scale's options but those the step sets itself (Table 1's --val-size 0), except the
    dataset and model, which a scale replaces to be CPU-sized."""
    pairs = zip(scale.options[::2], scale.options[1::2])
    return tuple(part for option, value in pairs if option in SCALE_TASK or option not in given
                 for part in (option, value))


SCALE_TASK = ("--dataset", "--model")
"""The options a scale sets even where a study sets them: the network and data it trains on."""


@dataclass(frozen=True)
class Sweep:
    """`python rigl.py sweep ROOT/FOLDER`: a grid of runs, one run directory per cell."""

    folder: str
    options: Options
    """The grid's axes (sweep.AXES: methods, densities, ...) and other `train` options of every cell."""

    def at(self, scale: Scale) -> Options:
        """The options at `scale`: at most scale.values of an axis's values, and the study's own ΔT
        values in proportion to the scale's runs, ΔT · scale ΔT / 100 (at least 1), so that the
        learning-rate figure's four (α, ΔT) pairs still differ in a 24-step run."""
        limits, found = scale.values or {}, []
        for field, value in self.options:
            if field in limits:
                value = ",".join(value.split(",")[:limits[field]])
            if field == "update_intervals" and scale.update_interval is not None:
                ratio = scale.update_interval / SparsityConfig.update_interval
                value = ",".join(str(max(1, round(int(v) * ratio))) for v in value.split(","))
            found.append((field, value))
        return tuple(found)

    def grid(self, scale: Scale) -> dict[str, list]:
        """The typed grid the command trains at `scale`: every axis, its configuration field's
        default where the step sets none, the scale's seeds and ΔT."""
        values = {axis: default_of(field) for axis, (field, _) in AXES.items()}
        values.update({field: value for field, value in self.at(scale) if field in AXES})
        values["seeds"] = seeds_of(scale)
        if scale.update_interval is not None and "update_intervals" not in dict(self.options):
            values["update_intervals"] = str(scale.update_interval)
        return parse_grid(values)

    def dataset(self) -> str:
        return dict(self.options).get("dataset", TrainConfig.dataset)

    def run_dir(self, scale: Scale, root: str, **cell: object) -> str:
        """The run directory of the cell with these values (and the scale's other values), as the
        sweep names it (runs.run_name)."""
        grid = self.grid(scale)
        found = cells(grid)
        [chosen] = [c for c in found if all(c[k] == v for k, v in cell.items())]
        return f"{root}/{self.folder}/{run_name(chosen, varied_fields(grid, found))}"

    def commands(self, scale: Scale, root: str) -> list[list[str]]:
        step = ("sweep", f"{root}/{self.folder}", *flags(self.at(scale)), "--seeds", seeds_of(scale))
        if scale.update_interval is not None and "update_intervals" not in dict(self.options):
            step += ("--update-intervals", str(scale.update_interval))
        return [list(step + own_options(scale, step))]

    def full_runs(self) -> list[tuple[str, float]]:
        return [(self.dataset(), cell["multiplier"]) for cell in cells(self.grid(SCALES["full"]))]


@dataclass(frozen=True)
class Tune:
    """`python rigl.py tune ROOT/FOLDER`: the α/ΔT search of one (distribution, density)."""

    folder: str
    options: Options
    """The search's `train` options: --distribution, --density."""

    def commands(self, scale: Scale, root: str) -> list[list[str]]:
        step = ("tune", f"{root}/{self.folder}", *flags(self.options), "--seeds", seeds_of(scale))
        if scale.update_interval is not None:  # ΔT searched from the scale's up to the paper's, which tune compares with
            low = scale.update_interval
            step += ("--interval-range", f"{low},{SparsityConfig.update_interval},{low}")
        step += ("--trials", str(scale.trials))
        return [list(step + own_options(scale, step))]

    def full_runs(self) -> list[tuple[str, float]]:
        full = SCALES["full"]
        return [(dict(self.options).get("dataset", TrainConfig.dataset), 1.0)] * (full.trials * len(full.seeds))


RESTARTS = {"masks": ("--masks-from", "rigl-from-sm"), "densities": ("--densities-from", "rigl-at-sm-densities")}
"""Table 5's two readings of "restarted with RigL-SM's final distribution", both of which the report's
run scripts ran (RigL-reinit and RigL-reinit-dist): its exact final masks (ours), or fresh random
masks at its final per-layer densities. Each: the train option and the run directory's prefix."""


@dataclass(frozen=True)
class Restart:
    """`python rigl.py train`, one per seed: Table 5's restart, RigL from the final masks or per-layer
    densities (`reading`) of the RigL-SM run of `source` at the same distribution, density and seed."""

    source: Sweep
    distribution: str
    density: str
    reading: str
    """A key of RESTARTS."""

    def left_out(self, scale: Scale) -> bool:
        """A restart at a density that the scale leaves out of its source sweep."""
        return float(self.density) not in self.source.grid(scale)["densities"]

    def commands(self, scale: Scale, root: str) -> list[list[str]]:
        if self.left_out(scale):
            return []
        option, prefix = RESTARTS[self.reading]
        found = []
        for seed in scale.seeds:
            source = self.source.run_dir(scale, root, method="rigl-sm", distribution=self.distribution,
                                         density=float(self.density), seed=seed)
            step = ("train", "--method", "rigl", "--distribution", self.distribution, "--density", self.density,
                    option, source, "--seed", str(seed),
                    "--out", f"{root}/{self.source.folder}/restart/{prefix}-{self.distribution}-d{self.density}-s{seed}")
            if scale.update_interval is not None:
                step += ("--update-interval", str(scale.update_interval))
            found.append(list(step + own_options(scale, step)))
        return found

    def full_runs(self) -> list[tuple[str, float]]:
        return [(self.source.dataset(), TrainConfig.multiplier)] * len(self.commands(SCALES["full"], "ROOT"))


@dataclass(frozen=True)
class Report:
    """`python rigl.py report ROOT/FOLDER`: the tables and figures of the runs under it."""

    folder: str

    def commands(self, scale: Scale, root: str) -> list[list[str]]:
        """The report, comparing (α, ΔT) with the scale's reference point (α = 0.3, the scale's ΔT)."""
        reference = () if scale.update_interval is None else ("--reference-interval", str(scale.update_interval))
        return [["report", f"{root}/{self.folder}", *reference]]

    def full_runs(self) -> list[tuple[str, float]]:
        return []


Step = Sweep | Tune | Restart | Report


@dataclass(frozen=True)
class Study:
    """One table or figure of the report and the steps that reproduce it."""

    item: str
    """The report's table or figure, in its words."""
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    """The files under ROOT (glob patterns) where the table or figure is drawn."""


def sweep(folder: str, **options: str) -> Sweep:
    return Sweep(folder, tuple(options.items()))


def tune(folder: str, **options: str) -> Tune:
    return Tune(folder, tuple(options.items()))


REDISTRIBUTION = sweep("redistribution", methods="rigl,rigl-sg,rigl-sm", distributions="uniform,erk",
                       densities="0.1,0.2")
LR_PAIRS = (("0.3", "100"), ("0.4", "200"), ("0.4", "500"), ("0.5", "750"))
"""(α, ΔT) of the report's learning-rate figure."""

STUDIES = {
    "table1": Study(
        "Table 1: RigL (ERK) and dense on all 50,000 training images (no validation split)",
        (sweep("table1", methods="dense,rigl", distributions="erk", densities="0.1,0.2,0.5", val_size="0"),
         Report("table1")),
        ("table1/report.md",)),
    "table2": Study(
        "Table 2: CIFAR-10 WRN-22-2, every method at d = 0.1 and 0.2",
        (sweep("table2", methods="dense,small-dense,static,set,rigl,snfs,pruning", distributions="uniform",
               densities="0.1,0.2"),
         sweep("table2", methods="set,rigl", distributions="erk", densities="0.1,0.2"),
         sweep("table2", methods="rigl", multipliers="2", distributions="uniform,erk", densities="0.1,0.2"),
         Report("table2")),
        ("table2/report.md", "table2/figures/accuracy_vs_density.png", "table2/figures/accuracy_vs_flops.png")),
    "table3": Study(
        "Table 3: CIFAR-100 ResNet-50 at d = 0.1 and 0.2",
        (sweep("table3", methods="dense,static,rigl,snfs,pruning", distributions="uniform", densities="0.1,0.2",
               dataset="cifar100"),
         sweep("table3", methods="rigl", distributions="erk", densities="0.1,0.2", dataset="cifar100"),
         sweep("table3", methods="rigl", multipliers="3", distributions="uniform", densities="0.1,0.2",
               dataset="cifar100"),
         Report("table3")),
        ("table3/report.md",)),
    "table4": Study(
        "Table 4 and the tuning contour: α and ΔT tuned by TPE per distribution at d = 0.1",
        (tune("table4", distribution="uniform", density="0.1"), tune("table4", distribution="erk", density="0.1")),
        ("table4/tune.md", "table4/figures/tune-*-search.png")),
    "lr": Study(
        "Learning-rate figure: RigL (ERK) d = 0.1 against lr, for four (α, ΔT)",
        tuple(sweep("lr", methods="rigl", distributions="erk", densities="0.1", lrs="0.1,0.05,0.01,0.005",
                    drop_fractions=alpha, update_intervals=interval) for alpha, interval in LR_PAIRS)
        + (Report("lr"),),
        ("lr/figures/accuracy_vs_lr.png",)),
    "table5": Study(
        "Table 5: redistribution (RigL-SG, RigL-SM) and RigL restarted from RigL-SM's final masks or densities",
        (REDISTRIBUTION,) + tuple(Restart(REDISTRIBUTION, distribution, density, reading) for reading in RESTARTS
                                  for distribution in ("uniform", "erk") for density in ("0.1", "0.2"))
        + (Report("redistribution"),),
        ("redistribution/report.md",)),
    "density-evolution": Study(
        "Density distribution evolution: forward FLOPs over training, final layer densities side by side",
        (REDISTRIBUTION, Report("redistribution")),
        ("redistribution/figures/flops_over_training_*.png",)),
    "fixed-flops": Study(
        "Fixed FLOPs vs fixed parameters: uniform against ERK at equal density and at uniform's FLOPs, "
        "CIFAR-10 WRN-22-2 and CIFAR-100 ResNet-50",
        (sweep("distributions/fixed-parameters", methods="rigl", distributions="uniform,erk", densities="0.1,0.2,0.5"),
         sweep("distributions/fixed-flops", methods="rigl", distributions="erk", densities="0.1,0.2,0.5",
               match_flops="uniform"),
         Report("distributions"),
         sweep("distributions-cifar100/uniform", methods="rigl", distributions="uniform", densities="0.1,0.2,0.5",
               dataset="cifar100"),
         sweep("distributions-cifar100/fixed-flops", methods="rigl", distributions="erk", densities="0.1,0.2,0.5",
               match_flops="uniform", dataset="cifar100"),
         Report("distributions-cifar100")),
        ("distributions/figures/distributions_at_equal_flops.png", "distributions/figures/accuracy_vs_flops.png",
         "distributions-cifar100/figures/distributions_at_equal_flops.png")),
    "rigl-struct": Study(
        "Supplement, Dynamic Structured Sparsity: RigL-struct (kernel-level masks) beside RigL",
        (sweep("struct", methods="rigl,rigl-struct", distributions="uniform,er", densities="0.1,0.2"), Report("struct")),
        ("struct/report.md",)),
    "findings": Study(
        "The report's three findings at one size: RigL against static, SET and SNFS at d = 0.05 (uniform and "
        "ERK); RigL 2× against pruning; α and ΔT around the reference point at d = 0.1 and 0.2 (ERK)",
        (sweep("findings", methods="static,set,snfs,rigl", distributions="uniform,erk", densities="0.05"),
         sweep("findings", methods="pruning", distributions="uniform", densities="0.05"),
         sweep("findings", methods="rigl", multipliers="2", distributions="uniform", densities="0.05"),
         sweep("findings", methods="rigl", distributions="erk", densities="0.1,0.2", drop_fractions="0.3,0.5",
               update_intervals="100,200"),
         Report("findings")),
        ("findings/report.md", "findings/comparisons.csv", "findings/runs.csv")),
}
"""Every table and figure of the report that a command reproduces, in the report's order; then the
findings study, which holds the report's three findings to one size (docs/results.md)."""


def commands(study: Study, scale: Scale, root: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The study's commands at `scale` under `root`, each ready for the command line; `extra`
    options go to every sweep, tune and train, after the scale's."""
    return [command + (list(extra) if command[0] != "report" else [])
            for step in study.steps for command in step.commands(scale, root)]


def full_runs(study: Study) -> list[tuple[str, float]]:
    """(dataset, multiplier) of every training run of the study at full length, each once."""
    return [run for step in study.steps for run in step.full_runs()]


def default_of(field: str) -> str:
    """A sweep axis's value when a study does not set it: its configuration field's default."""
    if field == "lr":
        return ""  # the dataset's recipe
    return str(getattr(SparsityConfig, field, None) or getattr(TrainConfig, field))


def gpu_hours(study: Study) -> float:
    """GPU-hours of the study at full length, at RUN_HOURS per run and 1× schedule."""
    return sum(RUN_HOURS[dataset] * multiplier for dataset, multiplier in full_runs(study))
