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

RUN_HOURS = {"cifar10": 2.0, "cifar100": 6.0}
"""GPU-hours of one 250-epoch run at 1×: the report's GTX 1080 times, "2 hours and 6 hours
respectively per training run" for CIFAR-10 WRN-22-2 and CIFAR-100 ResNet-50 (its summary)."""


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
whole test set, three seeds: about 2 minutes a run on a 2-core machine, the findings study's size.
cpu: WRN-10-1 on 512 synthetic images for 3 epochs (24 steps, ΔT = 4), two seeds, minutes per study
on a laptop. smoke: one seed, 4 steps of 16 images, 64
test images, the first density and two learning rates of each grid: every command of every study,
with all its options, at the least cost (what the tests run)."""


@dataclass(frozen=True)
class Part:
    """A chosen part of a study (`reproduce --methods --densities --seeds`): only its runs are trained,
    into the same ROOT and under the same names as the whole study's, so that parts add up to it."""

    methods: tuple[str, ...] | None = None
    densities: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None
    """None: every method, density or seed of the study."""

    def keeps(self, field: str, value: str) -> bool:
        chosen = getattr(self, field)
        return chosen is None or type(chosen[0])(value) in chosen

    def seeds_of(self, scale: Scale) -> tuple[int, ...]:
        return tuple(s for s in scale.seeds if self.keeps("seeds", str(s)))


WHOLE = Part()
"""Every run of a study."""


Options = tuple[tuple[str, str], ...]
"""A step's options in the order its command prints them: (field, value), e.g. ("densities", "0.1,0.2")."""


def flags(options: Options) -> tuple[str, ...]:
    """Options as the command line writes them: ("--densities", "0.1,0.2", ...)."""
    return tuple(part for field, value in options for part in (f"--{field.replace('_', '-')}", value))


def seeds_of(scale: Scale, part: Part = WHOLE) -> str:
    return ",".join(map(str, part.seeds_of(scale)))


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

    def at(self, scale: Scale, part: Part = WHOLE) -> Options:
        """The options at `scale`: at most scale.values of an axis's values, and the study's own ΔT
        values in proportion to the scale's runs, ΔT · scale ΔT / 100 (at least 1), so that the
        learning-rate figure's four (α, ΔT) pairs still differ in a 24-step run; of `part`'s
        methods and densities only (an axis left empty: the step trains nothing)."""
        limits, found = scale.values or {}, []
        for field, value in self.options:
            if field in limits:
                value = ",".join(value.split(",")[:limits[field]])
            if field in ("methods", "densities"):
                value = ",".join(v for v in value.split(",") if part.keeps(field, v))
            if field == "update_intervals" and scale.update_interval is not None:
                ratio = scale.update_interval / SparsityConfig.update_interval
                value = ",".join(str(max(1, round(int(v) * ratio))) for v in value.split(","))
            found.append((field, value))
        return tuple(found)

    def grid(self, scale: Scale, part: Part = WHOLE) -> dict[str, list]:
        """The typed grid the command trains at `scale`: every axis, its configuration field's
        default where the step sets none, the scale's seeds and ΔT; of `part` only."""
        values = {axis: default_of(field) for axis, (field, _) in AXES.items()}
        values.update({field: value for field, value in self.at(scale, part) if field in AXES})
        values["seeds"] = seeds_of(scale, part)
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

    def commands(self, scale: Scale, root: str, part: Part = WHOLE) -> list[list[str]]:
        options = self.at(scale, part)
        if not seeds_of(scale, part) or any(field in ("methods", "densities") and not value for field, value in options):
            return []  # the part holds none of this step's runs
        step = ("sweep", f"{root}/{self.folder}", *flags(options), "--seeds", seeds_of(scale, part))
        if scale.update_interval is not None and "update_intervals" not in dict(self.options):
            step += ("--update-intervals", str(scale.update_interval))
        return [list(step + own_options(scale, step))]

    def full_runs(self) -> list[tuple[str, float, str]]:
        grid = self.grid(SCALES["full"])
        found = cells(grid)
        return [(self.dataset(), cell["multiplier"], f"{self.folder}/{run_name(cell, varied_fields(grid, found))}")
                for cell in found]


@dataclass(frozen=True)
class Tune:
    """`python rigl.py tune ROOT/FOLDER`: the α/ΔT search of one (distribution, density)."""

    folder: str
    options: Options
    """The search's `train` options: --distribution, --density."""

    def commands(self, scale: Scale, root: str, part: Part = WHOLE) -> list[list[str]]:
        if part.seeds is not None:
            raise ValueError("--seeds: a tune study's objective is the mean over all its seeds, so its trials "
                             "cannot be split by seed; choose its densities instead")
        if not (part.keeps("methods", "rigl") and part.keeps("densities", dict(self.options)["density"])):
            return []
        step = ("tune", f"{root}/{self.folder}", *flags(self.options), "--seeds", seeds_of(scale))
        if scale.update_interval is not None:  # ΔT searched from the scale's up to the paper's, which tune compares with
            low = scale.update_interval
            step += ("--interval-range", f"{low},{SparsityConfig.update_interval},{low}")
        step += ("--trials", str(scale.trials))
        return [list(step + own_options(scale, step))]

    def full_runs(self) -> list[tuple[str, float, str]]:
        full, dataset = SCALES["full"], dict(self.options).get("dataset", TrainConfig.dataset)
        return [(dataset, 1.0, f"{self.folder}/{flags(self.options)}/{i}") for i in range(full.trials * len(full.seeds))]


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

    def left_out(self, scale: Scale, part: Part = WHOLE) -> bool:
        """A restart at a density that the scale or the part leaves out of its source sweep."""
        return (float(self.density) not in self.source.grid(scale)["densities"]
                or not (part.keeps("methods", "rigl") and part.keeps("densities", self.density)))

    def commands(self, scale: Scale, root: str, part: Part = WHOLE) -> list[list[str]]:
        if self.left_out(scale, part):
            return []
        option, prefix = RESTARTS[self.reading]
        found = []
        for seed in part.seeds_of(scale):
            source = self.source.run_dir(scale, root, method="rigl-sm", distribution=self.distribution,
                                         density=float(self.density), seed=seed)
            step = ("train", "--method", "rigl", "--distribution", self.distribution, "--density", self.density,
                    option, source, "--seed", str(seed),
                    "--out", f"{root}/{self.source.folder}/restart/{prefix}-{self.distribution}-d{self.density}-s{seed}")
            if scale.update_interval is not None:
                step += ("--update-interval", str(scale.update_interval))
            found.append(list(step + own_options(scale, step)))
        return found

    def full_runs(self) -> list[tuple[str, float, str]]:
        return [(self.source.dataset(), TrainConfig.multiplier, command[command.index("--out") + 1])
                for command in self.commands(SCALES["full"], "ROOT")]


@dataclass(frozen=True)
class Report:
    """`python rigl.py report ROOT/FOLDER`: the tables and figures of the runs under it."""

    folder: str
    dataset: str = TrainConfig.dataset
    """The dataset whose published numbers the runs are held against: at a scale that trains on
    synthetic data instead, the report is told (--published-dataset)."""

    def commands(self, scale: Scale, root: str, part: Part = WHOLE) -> list[list[str]]:
        """The report, comparing (α, ΔT) with the scale's reference point (α = 0.3, the scale's ΔT)."""
        reference = () if scale.update_interval is None else ("--reference-interval", str(scale.update_interval))
        stand_in = ("--published-dataset", self.dataset) if "--dataset" in scale.options else ()
        return [["report", f"{root}/{self.folder}", *reference, *stand_in]]

    def full_runs(self) -> list[tuple[str, float, str]]:
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
REDISTRIBUTION_CIFAR100 = sweep("redistribution-cifar100", methods="rigl,rigl-sg,rigl-sm", distributions="uniform,erk",
                                densities="0.1,0.2", dataset="cifar100")
LR_PAIRS = (("0.3", "100"), ("0.4", "200"), ("0.4", "500"), ("0.5", "750"))
"""(α, ΔT) of the report's learning-rate figure."""
FIGURE_DENSITIES = "0.05,0.1,0.2,0.5"
"""The densities of the report's main CIFAR-10 figure (Figure 1, RR's visualization/main_results.py)."""
TUNED_DENSITIES = ("0.1", "0.2", "0.5")
"""The densities of Table 4 and of the learning-rate figure (Figure 3), each with Random and ERK."""


def restarts(source: Sweep) -> tuple[Restart, ...]:
    """Table 5's restarts from RigL-SM's final distribution, both readings, of a redistribution sweep."""
    return tuple(Restart(source, distribution, density, reading) for reading in RESTARTS
                 for distribution in ("uniform", "erk") for density in ("0.1", "0.2"))


STUDIES = {
    "table1": Study(
        "Table 1: dense, Static (ERK), pruning and RigL (ERK) on all 50,000 training images (no validation split)",
        (sweep("table1", methods="dense,static,rigl", distributions="erk", densities="0.1,0.2,0.5", val_size="0"),
         sweep("table1", methods="pruning", distributions="uniform", densities="0.1,0.2,0.5", val_size="0"),
         Report("table1")),
        ("table1/report.md",)),
    "table2": Study(
        "Table 2 and Figure 1: CIFAR-10 WRN-22-2, every method at d = 0.1 and 0.2; Figure 1's panels (Random, "
        "ERK, 2×) at d = 0.05, 0.1, 0.2, 0.5",
        (sweep("table2", methods="dense,static,set,rigl,snfs,pruning", distributions="uniform",
               densities=FIGURE_DENSITIES),
         sweep("table2", methods="small-dense,pruning,lottery", distributions="uniform", densities="0.1,0.2"),
         sweep("table2", methods="static,set,rigl,snfs", distributions="erk", densities=FIGURE_DENSITIES),
         sweep("table2", methods="static,set,rigl", multipliers="2", distributions="uniform",
               densities=FIGURE_DENSITIES),
         sweep("table2", methods="snfs", multipliers="2", distributions="uniform", densities="0.1,0.2"),
         sweep("table2", methods="rigl", multipliers="2", distributions="erk", densities="0.1,0.2"),
         Report("table2")),
        ("table2/report.md", "table2/figures/accuracy_vs_density.png", "table2/figures/accuracy_vs_flops.png")),
    "table3": Study(
        "Table 3: CIFAR-100 ResNet-50, every method at d = 0.1 and 0.2",
        (sweep("table3", methods="dense,small-dense,static,set,rigl,snfs,pruning,lottery", distributions="uniform",
               densities="0.1,0.2", dataset="cifar100"),
         sweep("table3", methods="static,set,rigl,snfs", distributions="erk", densities="0.1,0.2", dataset="cifar100"),
         sweep("table3", methods="rigl", multipliers="2,3", distributions="uniform", densities="0.1,0.2",
               dataset="cifar100"),
         sweep("table3", methods="rigl", multipliers="2", distributions="erk", densities="0.1,0.2", dataset="cifar100"),
         Report("table3", "cifar100")),
        ("table3/report.md",)),
    "table4": Study(
        "Table 4 and the tuning contour: α and ΔT tuned by TPE for Random and ERK at d = 0.1, 0.2 and 0.5",
        tuple(tune("table4", distribution=distribution, density=density)
              for distribution in ("uniform", "erk") for density in TUNED_DENSITIES),
        ("table4/tune.md", "table4/figures/tune-*-search.png")),
    "lr": Study(
        "Learning-rate figure: RigL against lr for four (α, ΔT), Random and ERK at d = 0.1, 0.2 and 0.5",
        tuple(sweep("lr", methods="rigl", distributions="uniform,erk", densities=",".join(TUNED_DENSITIES),
                    lrs="0.1,0.05,0.01,0.005", drop_fractions=alpha, update_intervals=interval)
              for alpha, interval in LR_PAIRS)
        + (Report("lr"),),
        ("lr/figures/accuracy_vs_lr.png",)),
    "table5": Study(
        "Table 5: redistribution (RigL-SG, RigL-SM) and RigL restarted from RigL-SM's final masks or densities, "
        "CIFAR-10 and CIFAR-100",
        (REDISTRIBUTION, *restarts(REDISTRIBUTION), Report("redistribution"),
         REDISTRIBUTION_CIFAR100, *restarts(REDISTRIBUTION_CIFAR100), Report("redistribution-cifar100", "cifar100")),
        ("redistribution/report.md", "redistribution-cifar100/report.md")),
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
         Report("distributions-cifar100", "cifar100")),
        ("distributions/figures/distributions_at_equal_flops.png", "distributions/figures/accuracy_vs_flops.png",
         "distributions-cifar100/figures/distributions_at_equal_flops.png")),
    "rigl-struct": Study(
        "Supplement, Dynamic Structured Sparsity: RigL-struct (kernel-level masks) beside RigL and Small-Dense, "
        "CIFAR-10 and CIFAR-100",
        (sweep("struct", methods="small-dense,rigl,rigl-struct", distributions="uniform,er", densities="0.1,0.2"),
         Report("struct"),
         sweep("struct-cifar100", methods="small-dense,rigl,rigl-struct", distributions="uniform,er",
               densities="0.1,0.2", dataset="cifar100"),
         Report("struct-cifar100", "cifar100")),
        ("struct/report.md", "struct-cifar100/report.md")),
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


def commands(study: Study, scale: Scale, root: str, extra: tuple[str, ...] = (),
             part: Part = WHOLE) -> list[list[str]]:
    """The study's commands at `scale` under `root` (of `part` only), each ready for the command line;
    `extra` options go to every sweep, tune and train, after the scale's."""
    return [command + (list(extra) if command[0] != "report" else [])
            for step in study.steps for command in step.commands(scale, root, part)]


def run_dirs(study: Study, scale: Scale, root: str, part: Part = WHOLE) -> list[str]:
    """The run directory of every sweep cell and restart of the study at `scale` (of `part`), each
    once, as the commands name them; tune's trials are counted by tune itself."""
    found = {}
    for step in study.steps:
        if isinstance(step, Sweep) and step.commands(scale, root, part):
            grid = step.grid(scale, part)
            chosen = cells(grid)
            found.update({f"{root}/{step.folder}/{run_name(c, varied_fields(grid, chosen))}": None for c in chosen})
        elif isinstance(step, Restart):
            found.update({c[c.index("--out") + 1]: None for c in step.commands(scale, root, part)})
    return list(found)


def full_runs(study: Study) -> list[tuple[str, float]]:
    """(dataset, multiplier) of every training run of the study at full length, each once: a run two
    of its steps plan (Table 2's pruning cells, which its lottery sweep needs too) counts once."""
    found = {run_dir: (dataset, multiplier) for step in study.steps for dataset, multiplier, run_dir in step.full_runs()}
    return list(found.values())


def default_of(field: str) -> str:
    """A sweep axis's value when a study does not set it: its configuration field's default."""
    if field == "lr":
        return ""  # the dataset's recipe
    return str(getattr(SparsityConfig, field, None) or getattr(TrainConfig, field))


def gpu_hours(study: Study) -> float:
    """GPU-hours of the study at full length, at RUN_HOURS per run and 1× schedule."""
    return sum(RUN_HOURS[dataset] * multiplier for dataset, multiplier in full_runs(study))
