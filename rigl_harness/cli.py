"""The command line: python rigl.py train | flops | sweep | tune | reproduce | report | bench | export,
declared as typer documents.

Each option's default is its configuration field's (SparsityConfig in rigl.py, TrainConfig in
train.py), and its help is that field's docstring (options.help_of).
"""

import json
import logging
import os
import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Optional

try:
    import rich  # noqa: F401  (the harness prints with it)
    import typer
except ModuleNotFoundError as error:
    raise SystemExit(f"the command line needs the packages of requirements.txt ({error}): "
                     f"pip install -r requirements.txt") from None

import flops
from rigl import Distribution, Method, SparsityConfig
from rigl_harness import bench, report, runs, studies, sweep, terminal, tune
from rigl_harness.data import check_cifar_on_disk
from rigl_harness.deploy import export
from rigl_harness.distributed import pick_device
from rigl_harness.options import comma_separated, configs_from_options, help_of
from rigl_harness.tune import TuneSettings
from train import REPORT_STEPS, Dataset, Precision, TrainConfig, resolve_recipe, start_run

def sparsity_option(field: str, **extra) -> typer.Option:
    """The option of a SparsityConfig field, its docstring as help."""
    return typer.Option(help=help_of(SparsityConfig, field), **extra)


def train_option(field: str, **extra) -> typer.Option:
    """The option of a TrainConfig field, its docstring as help."""
    return typer.Option(help=help_of(TrainConfig, field), **extra)


# The options that several commands share, one declaration each.
MethodOption = Annotated[Method, sparsity_option("method")]
DensityOption = Annotated[float, sparsity_option("density")]
DistributionOption = Annotated[Distribution, sparsity_option("distribution")]
IntervalOption = Annotated[int, sparsity_option("update_interval")]
DenseLayersOption = Annotated[Optional[str], sparsity_option("dense_layers", metavar="A,B")]
ModelOption = Annotated[Optional[str], train_option("model")]
DatasetOption = Annotated[Dataset, train_option("dataset")]
MultiplierOption = Annotated[float, train_option("multiplier")]
DeviceOption = Annotated[str, train_option("device")]
MatchFlopsOption = Annotated[Optional[Literal["uniform"]], train_option("match_flops")]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="RigL and its baselines: `python rigl.py train --density 0.1`.")


def main() -> None:
    """python rigl.py COMMAND; COMMAND --help lists its options."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A mask update replaces the optimizer step by design; with ΔT = 1 the first step is one, and
    # torch would warn that the learning-rate schedule stepped before the optimizer did.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
    app()


# ---------------------------------------------------------------------------------------------
# train: every field of TrainConfig and SparsityConfig (but the seed, which is TrainConfig's)
# ---------------------------------------------------------------------------------------------


@app.command("train")
def train_command(
    ctx: typer.Context,
    method: MethodOption = SparsityConfig.method,
    density: DensityOption = SparsityConfig.density,
    distribution: DistributionOption = SparsityConfig.distribution,
    erk_power_scale: Annotated[float, sparsity_option("erk_power_scale")] = SparsityConfig.erk_power_scale,
    drop_fraction: Annotated[float, sparsity_option("drop_fraction")] = SparsityConfig.drop_fraction,
    update_interval: IntervalOption = SparsityConfig.update_interval,
    t_end: Annotated[float, sparsity_option("t_end")] = SparsityConfig.t_end,
    t_start: Annotated[float, sparsity_option("t_start")] = SparsityConfig.t_start,
    dense_layers: DenseLayersOption = SparsityConfig.dense_layers,
    layer_densities: Annotated[Optional[str],
                               sparsity_option("layer_densities", metavar="NAME=D,...")] = None,
    model: ModelOption = TrainConfig.model,
    dataset: DatasetOption = TrainConfig.dataset,
    data_dir: Annotated[str, train_option("data_dir")] = TrainConfig.data_dir,
    epochs: Annotated[Optional[int], train_option("epochs")] = TrainConfig.epochs,
    multiplier: MultiplierOption = TrainConfig.multiplier,
    batch_size: Annotated[Optional[int], train_option("batch_size")] = TrainConfig.batch_size,
    lr: Annotated[Optional[float], train_option("lr")] = TrainConfig.lr,
    momentum: Annotated[float, train_option("momentum")] = TrainConfig.momentum,
    weight_decay: Annotated[Optional[float], train_option("weight_decay")] = TrainConfig.weight_decay,
    label_smoothing: Annotated[Optional[float],
                               train_option("label_smoothing")] = TrainConfig.label_smoothing,
    warmup: Annotated[Optional[float], train_option("warmup")] = TrainConfig.warmup,
    lr_milestones: Annotated[Optional[str],
                             train_option("lr_milestones", metavar="A,B")] = TrainConfig.lr_milestones,
    lr_gamma: Annotated[Optional[float], train_option("lr_gamma")] = TrainConfig.lr_gamma,
    val_size: Annotated[int, train_option("val_size")] = TrainConfig.val_size,
    train_subset: Annotated[int, train_option("train_subset")] = TrainConfig.train_subset,
    test_subset: Annotated[int, train_option("test_subset")] = TrainConfig.test_subset,
    seed: Annotated[int, train_option("seed")] = TrainConfig.seed,
    device: DeviceOption = TrainConfig.device,
    precision: Annotated[Precision, train_option("precision")] = TrainConfig.precision,
    accumulate: Annotated[int, train_option("accumulate")] = TrainConfig.accumulate,
    workers: Annotated[int, train_option("workers")] = TrainConfig.workers,
    masks_from: Annotated[Optional[str],
                          train_option("masks_from", metavar="RUN_DIR")] = TrainConfig.masks_from,
    densities_from: Annotated[Optional[str],
                              train_option("densities_from", metavar="RUN_DIR")] = TrainConfig.densities_from,
    init_from: Annotated[Optional[str], train_option("init_from", metavar="RUN_DIR")] = TrainConfig.init_from,
    match_flops: MatchFlopsOption = TrainConfig.match_flops,
    out: Annotated[Optional[str], typer.Option(
        help="Run directory. Default: runs/<dataset>-<model>-<name>, named as a sweep names its cells "
        "(rigl-erk-d0.1-x1.0-s0).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
) -> None:
    """Train; the defaults are the report's CIFAR-10 WRN-22-2 RigL (ERK) run."""
    train_run(ctx.params)


def train_run(options: dict) -> None:
    """One run into --out (default runs/<dataset>-<model>-<name>, default_name),
    or the run there continued with --resume; a stop names what is saved."""
    console, out = terminal.make_console(), Path(options["out"] or "runs")

    def interrupted() -> str:
        if (out / "checkpoint.pt").exists():
            return f"interrupted: the last finished epoch is saved in {out}; continue with --resume"
        return "interrupted before the first epoch finished: nothing to resume"
    with terminal.user_errors(console, interrupted):
        cfg, sparse_cfg = configs_from_options(options)
        if not options["out"]:
            out = out / f"{cfg.dataset}-{cfg.model}-{default_name(cfg, sparse_cfg, options['lr'])}"
        start_run(cfg, sparse_cfg, out, options["resume"], console)


def default_name(cfg: TrainConfig, sparse_cfg: SparsityConfig, lr: float | None) -> str:
    """A train run's directory name, as a sweep would name it (runs.run_name): α and ΔT where they
    are not the paper's, the learning rate where --lr gave one."""
    cell = {"method": sparse_cfg.method, "distribution": sparse_cfg.distribution,
            "density": sparse_cfg.density, "multiplier": cfg.multiplier,
            "drop_fraction": sparse_cfg.drop_fraction, "update_interval": sparse_cfg.update_interval,
            "lr": lr, "seed": cfg.seed}
    return runs.run_name(cell, {f for f in ("drop_fraction", "update_interval")
                                if cell[f] != getattr(SparsityConfig, f)})


# ---------------------------------------------------------------------------------------------
# flops: what each method costs, per layer and as the columns of the report's Table 2
# ---------------------------------------------------------------------------------------------


@app.command("flops")
def flops_command(
    method: MethodOption = SparsityConfig.method,
    density: DensityOption = SparsityConfig.density,
    distribution: DistributionOption = SparsityConfig.distribution,
    update_interval: IntervalOption = SparsityConfig.update_interval,
    dense_layers: DenseLayersOption = SparsityConfig.dense_layers,
    model: ModelOption = TrainConfig.model,
    dataset: DatasetOption = TrainConfig.dataset,
    multiplier: MultiplierOption = TrainConfig.multiplier,
    match_flops: MatchFlopsOption = TrainConfig.match_flops,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """FLOPs of a model at a density: per layer, inference, training per step, and Table 2's
    columns for every method (paper convention: multiplies and adds counted separately)."""
    console = terminal.make_console()
    with terminal.user_errors(console):
        cfg = resolve_recipe(TrainConfig(model=model, dataset=dataset, multiplier=multiplier,
                                         match_flops=match_flops))
        sparse_cfg = SparsityConfig(method=method, density=density, distribution=distribution,
                                    update_interval=update_interval,
                                    dense_layers=comma_separated(dense_layers, str))
        counted = flops.counted_model(cfg.model, dataset)
        matched = (flops.matching_density(cfg.model, dataset, sparse_cfg, match_flops, counted)
                   if match_flops else density)
        at = replace(sparse_cfg, density=matched)  # pruning's density averaged along the report's run
        result = flops.method_flops(cfg.model, dataset, at, multiplier, counted, REPORT_STEPS)
        result["methods"] = flops.table2_columns(cfg.model, dataset, at, multiplier, REPORT_STEPS)
        result["density"] = matched
        result["match_flops"] = match_flops and {"target": match_flops, "density": density}
    if json_output:
        print(json.dumps(result))
        return
    at = f"d = {matched:.4f} ({match_flops}'s FLOPs at d = {density})" if match_flops else f"d = {density}"
    flops.print_flop_report(result, f"{cfg.model} on {dataset}, {method}, {distribution}, {at}, "
                                    f"×{multiplier}, ΔT = {update_interval}", console)


# ---------------------------------------------------------------------------------------------
# sweep: a grid of training runs (sweep.py)
# ---------------------------------------------------------------------------------------------


SWEEP_SETS = {field for field, _ in sweep.AXES.values()} | {"masks_from", "init_from", "out", "resume"}
"""The `train` options a sweep sets for each cell."""
TUNE_SETS = {"drop_fraction", "update_interval", "seed", "masks_from", "densities_from", "init_from", "out",
             "resume"}
"""The `train` options tune sets for each run of a trial."""


def parsed_train_options(ctx: typer.Context):
    """The `train` options that follow a command's own, parsed by `train` itself (its defaults filled in)."""
    train = ctx.parent.command.get_command(ctx.parent, "train")
    return train.make_context("train", list(ctx.args), parent=ctx.parent)


def given_options(parsed) -> set[str]:
    """The options of a parsed command that its command line gave (not defaults)."""
    return {name for name in parsed.params if parsed.get_parameter_source(name).name == "COMMANDLINE"}


def train_options_of(ctx: typer.Context, reserved: set[str], hint: str) -> dict:
    """The `train` options that follow a sweep's or tune's own, parsed by `train` itself (its
    defaults filled in); those in `reserved` are the command's to set, and refused with `hint`."""
    parsed = parsed_train_options(ctx)
    given = sorted(given_options(parsed) & reserved)
    if given:
        raise runs.UsageError(f"{ctx.info_name} sets {', '.join('--' + n.replace('_', '-') for n in given)} "
                              f"for each run: {hint}")
    return parsed.params


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep_command(
    ctx: typer.Context,
    root: Annotated[str, typer.Argument(
        help="Directory that receives one run directory per cell (give it first).")],
    methods: Annotated[str, typer.Option(help="Comma-separated values of --method.")] = SparsityConfig.method,
    densities: Annotated[str, typer.Option(
        help="Comma-separated values of --density.")] = str(SparsityConfig.density),
    distributions: Annotated[str, typer.Option(
        help="Comma-separated values of --distribution.")] = SparsityConfig.distribution,
    seeds: Annotated[str, typer.Option(help="Comma-separated values of --seed.")] = str(TrainConfig.seed),
    multipliers: Annotated[str, typer.Option(
        help="Comma-separated values of --multiplier.")] = str(TrainConfig.multiplier),
    drop_fractions: Annotated[str, typer.Option(
        help="Comma-separated values of --drop-fraction (α).")] = str(SparsityConfig.drop_fraction),
    update_intervals: Annotated[str, typer.Option(
        help="Comma-separated values of --update-interval (ΔT).")] = str(SparsityConfig.update_interval),
    lrs: Annotated[str, typer.Option(
        help="Comma-separated values of --lr; empty: the dataset's recipe.")] = "",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the cells and their state; train nothing.")] = False,
) -> None:
    """Run a grid of training runs one after another into ROOT, one run directory per cell;
    finished cells are skipped and an interrupted one resumes, so a killed sweep restarts where
    it stopped. Several sweeps on one ROOT split the grid: a cell another process is training is
    skipped. Every other `train` option (python rigl.py train --help) applies to all cells."""
    console = terminal.make_console()
    stopped = "interrupted: rerun the same sweep to continue where it stopped"
    with terminal.user_errors(console, lambda: stopped):
        options = train_options_of(ctx, SWEEP_SETS,
                                   "use its grid options (--methods, --densities, --seeds, ...)")
        grid = sweep.parse_grid(ctx.params)
        empty = [axis for axis, values in grid.items() if not values]
        if empty:
            raise ValueError(f"--{empty[0].replace('_', '-')} needs at least one value")
        sweep.run_grid(Path(root), grid, options, dry_run, console)


# ---------------------------------------------------------------------------------------------
# tune: the report's α/ΔT search, Table 4 (tune.py)
# ---------------------------------------------------------------------------------------------

@app.command("tune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune_command(
    ctx: typer.Context,
    root: Annotated[str, typer.Argument(
        help="Directory of the studies' run directories, tune.journal and Table 4 (give it first).")],
    density: DensityOption = SparsityConfig.density,
    distribution: DistributionOption = SparsityConfig.distribution,
    method: MethodOption = SparsityConfig.method,
    trials: Annotated[int, typer.Option(help=help_of(TuneSettings, "trials"))] = TuneSettings.trials,
    seeds: Annotated[str, typer.Option(
        help=help_of(TuneSettings, "seeds"))] = ",".join(map(str, TuneSettings.seeds)),
    alpha_range: Annotated[str, typer.Option(
        help=help_of(TuneSettings, "alpha_range"), metavar="LOW,HIGH",
    )] = ",".join(map(str, TuneSettings.alpha_range)),
    interval_range: Annotated[str, typer.Option(
        help=help_of(TuneSettings, "interval_range"), metavar="LOW,HIGH,STEP",
    )] = ",".join(map(str, TuneSettings.interval_range)),
    startup_trials: Annotated[int, typer.Option(
        help=help_of(TuneSettings, "startup_trials"))] = TuneSettings.startup_trials,
    sampler_seed: Annotated[int, typer.Option(
        help=help_of(TuneSettings, "sampler_seed"))] = TuneSettings.sampler_seed,
    storage: Annotated[Optional[str], typer.Option(
        help="An Optuna RDB URL (postgresql://user:password@host/db, mysql://...) for workers on several "
        "machines. Default: ROOT/tune.journal.")] = None,
) -> None:
    """Search α and ΔT with TPE for one (method, distribution, density), the objective the mean
    over --seeds of the final validation accuracy; resumes to exactly --trials finished trials,
    and several processes on one ROOT share the study. Writes ROOT/tune.md, ROOT/tune.csv and
    ROOT/figures/tune-*.png. Every other `train` option applies to every run."""
    console = terminal.make_console()
    stopped = "interrupted: the trial is failed and its runs resume when tune is started again"
    with terminal.user_errors(console, lambda: stopped):
        options = train_options_of(ctx, TUNE_SETS, "tune searches α and ΔT, and takes its seeds from --seeds")
        settings = tune_settings(trials, seeds, alpha_range, interval_range, startup_trials, sampler_seed)
        cfg, sparse_cfg = configs_from_options({**options, "method": method, "density": density,
                                                "distribution": distribution, **tune.REFERENCE})
        tune.tune(Path(root), cfg, sparse_cfg, settings, storage, console)


def tune_settings(trials: int, seeds: str, alpha_range: str, interval_range: str, startup_trials: int,
                  sampler_seed: int) -> tune.TuneSettings:
    """The search's options, parsed; a malformed range named in one line."""
    try:
        alphas, intervals = comma_separated(alpha_range, float), comma_separated(interval_range, int)
        seed_list = comma_separated(seeds, int)
    except ValueError:
        raise ValueError("--seeds takes integers, --alpha-range LOW,HIGH and --interval-range LOW,HIGH,STEP "
                         "numbers") from None
    if len(alphas) != 2 or len(intervals) != 3:
        raise ValueError("--alpha-range takes LOW,HIGH and --interval-range LOW,HIGH,STEP")
    return TuneSettings(trials, seed_list, alphas, intervals, startup_trials, sampler_seed)


# ---------------------------------------------------------------------------------------------
# reproduce: every command of one table or figure of the report (studies.py)
# ---------------------------------------------------------------------------------------------

StudyName = Literal[tuple(studies.STUDIES)]
ScaleName = Literal[tuple(studies.SCALES)]


@app.command("reproduce", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reproduce_command(
    ctx: typer.Context,
    study: Annotated[StudyName, typer.Argument(help="The report's table or figure (docs/report-map.md).")],
    root: Annotated[str, typer.Argument(help="Directory of the study's sweeps, studies and reports.")],
    scale: Annotated[ScaleName, typer.Option(
        help="full: the report's runs; laptop: real CIFAR, about 2 min a run on 2 cores; cpu: synthetic data, "
             "minutes; smoke: the tests' size.")] = "full",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands; run nothing.")] = False,
    methods: Annotated[Optional[str], typer.Option(
        help="Only these methods of the study (comma-separated): a part of it, into the same ROOT.")] = None,
    densities: Annotated[Optional[str], typer.Option(
        help="Only these densities of the study (comma-separated).")] = None,
    seeds: Annotated[Optional[str], typer.Option(
        help="Only these of the scale's seeds (comma-separated).")] = None,
) -> None:
    """Run the sweep, tune, train and report commands of one of the report's tables or figures into
    ROOT, one after another; finished runs are skipped, so the same command continues a stopped
    study, and parts of a study (--methods, --densities, --seeds) run into one ROOT add up to it.
    Other `train` options (--data-dir, --device, ...) go to every run."""
    console = terminal.make_console()
    with terminal.user_errors(console, lambda: "interrupted: rerun the same reproduce command to continue"):
        chosen = studies.STUDIES[study]
        check_passed_on(ctx, chosen)
        extra, part = tuple(ctx.args), study_part(methods, densities, seeds)
        planned = studies.commands(chosen, studies.SCALES[scale], root, (), part)
        if all(command[0] == "report" for command in planned):
            raise runs.UsageError(f"the chosen part holds none of {study}'s runs at the {scale} scale: "
                                  f"see its plan with --dry-run")
        if not dry_run and "--dataset" not in studies.SCALES[scale].options:
            extra = check_real_data(ctx, chosen, console)
        found = studies.commands(chosen, studies.SCALES[scale], root, extra, part)
        console.print(f"{study}: {chosen.item}; at full length {len(studies.full_runs(chosen))} runs, about "
                      f"{studies.gpu_hours(chosen):g} GPU-hours (docs/report-map.md)",
                      highlight=False, soft_wrap=True)
        if not dry_run:
            claim_scale(Path(root), scale)
        run_steps(found, dry_run, console)
        print_progress(chosen, studies.SCALES[scale], root, part, console)


def run_steps(found: list[list[str]], dry_run: bool, console) -> None:
    """Print each of a study's commands and run it, but a step whose runs are all finished ("done")."""
    for i, command in enumerate(found, 1):
        step = command if dry_run else study_step(command)
        done = "" if step else ": done"
        console.print(f"[{i}/{len(found)}] python rigl.py {shlex.join(command)}{done}",
                      highlight=False, soft_wrap=True)
        if step and not dry_run:
            run_command(step)


def study_part(methods: str | None, densities: str | None, seeds: str | None) -> studies.Part:
    """The part of a study the options choose; none given: the whole study."""
    chosen = []
    for value, kind, option in ((methods, str, "--methods"), (densities, float, "--densities"), (seeds, int, "--seeds")):
        try:
            values = comma_separated(value, kind)
        except ValueError:
            raise runs.UsageError(f"{option} takes comma-separated {kind.__name__} values, got {value!r}") from None
        if values == ():
            raise runs.UsageError(f"{option} names no value: leave it out for the whole study")
        chosen.append(values)
    return studies.Part(*chosen)


def print_progress(study: studies.Study, scale: studies.Scale, root: str, part: studies.Part, console) -> None:
    """How many of the study's sweep and restart runs (and of the part's) have finished under ROOT:
    what is done and what is missing, counted from the run directories (summary.json)."""
    def finished(dirs: list[str]) -> str:
        return f"{sum(Path(d, 'summary.json').is_file() for d in dirs)} of {len(dirs)}"
    whole = studies.run_dirs(study, scale, root)
    if not whole:
        return
    line = f"finished under {root}: {finished(whole)} runs of the study"
    if part != studies.WHOLE:
        line += f" ({finished(studies.run_dirs(study, scale, root, part))} of this part)"
    console.print(line, highlight=False, soft_wrap=True)
    missing = [os.path.relpath(d, root) for d in whole if not Path(d, "summary.json").is_file()]
    if missing:
        more = f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
        console.print(f"still to run: {', '.join(missing[:SHOWN_MISSING])}{more}",
                      highlight=False, soft_wrap=True)


SHOWN_MISSING = 12
"""At most this many of a study's unfinished run directories are named after a reproduce."""


DATA_DIR_VARIABLE = "RIGL_DATA_DIR"
"""The folder holding the real CIFAR-10 (the one the tests use): a study on real data trains on it
when no --data-dir is given."""


def check_real_data(ctx: typer.Context, study: studies.Study, console) -> tuple[str, ...]:
    """The options passed on to a study on real data, with --data-dir from RIGL_DATA_DIR where none is
    given; a CIFAR it needs that is not there is refused in one line before anything runs."""
    parsed = parsed_train_options(ctx)
    extra, data_dir = tuple(ctx.args), parsed.params["data_dir"]
    if "data_dir" not in given_options(parsed) and os.environ.get(DATA_DIR_VARIABLE):
        data_dir = os.environ[DATA_DIR_VARIABLE]
        extra += ("--data-dir", data_dir)
        console.print(f"data: {data_dir} (from {DATA_DIR_VARIABLE})", highlight=False)
    for dataset in sorted({dataset for dataset, _ in studies.full_runs(study)}):
        check_cifar_on_disk(dataset, data_dir)
    return extra


RESTART_SETS = {"method", "distribution", "density", "masks_from", "densities_from", "init_from", "seed",
                "update_interval", "out", "resume"}
"""The `train` options a study's restart (Table 5) sets for each run."""


def check_passed_on(ctx: typer.Context, study: studies.Study) -> None:
    """Refuse, before anything runs, an option that one of the study's steps sets itself: it would be
    applied by the steps before it and refused by that one."""
    given = given_options(parsed_train_options(ctx))
    reserved = {studies.Sweep: SWEEP_SETS, studies.Tune: TUNE_SETS, studies.Restart: RESTART_SETS}
    for step in study.steps:
        clash = sorted(given & reserved.get(type(step), set()))
        if clash:
            kind = type(step).__name__.lower()
            raise runs.UsageError(f"--{clash[0].replace('_', '-')}: this study's {kind} steps set it for each "
                                  f"run; reproduce passes on only options that every step takes (--data-dir, "
                                  f"--device, --workers, ...)")


SCALE_RECORD = "reproduce.json"
"""ROOT's record of the scale its studies run at: one scale a ROOT, so that report never puts runs of
two lengths side by side."""


def claim_scale(root: Path, scale: str) -> None:
    """Record the scale in ROOT, or refuse one other than the scale ROOT already holds."""
    record = root / SCALE_RECORD
    if record.is_file():
        held = runs.read_json(record).get("scale")
        if held != scale:
            raise runs.UsageError(f"{root} holds the {held} scale's runs ({SCALE_RECORD}): reproduce --scale "
                                  f"{scale} into another ROOT")
        return
    root.mkdir(parents=True, exist_ok=True)
    runs.write_json(record, {"scale": scale})


def study_step(args: list[str]) -> list[str] | None:
    """A study's command as it runs now. Sweeps skip their finished cells themselves; a `train`
    whose --out holds the finished run of the same settings is skipped (None), one with a checkpoint
    continues (--resume), and one of other settings is refused, naming them."""
    if args[0] != "train":
        return args
    options = typer.main.get_command(app).get_command(None, "train").make_context("train", args[1:]).params
    cfg, sparse_cfg = configs_from_options(options)
    out = Path(options["out"])
    sweep.check_cell(out, cfg, sparse_cfg)
    state = sweep.cell_state(out)
    return None if state == "done" else args + ["--resume"] * (state == "resume")


def run_command(args: list[str]) -> None:
    """One command of this program in this process; a failure stops here with its exit code (the
    command has printed why)."""
    try:
        app(args, prog_name="rigl.py")
    except SystemExit as stop:  # the command's own exit: 0 when it succeeded
        if stop.code:
            raise


# ---------------------------------------------------------------------------------------------
# report, bench and export
# ---------------------------------------------------------------------------------------------


@app.command("report")
def report_command(
    root: Annotated[str, typer.Argument(help="Directory holding finished runs.")],
    reference_interval: Annotated[int, typer.Option(
        min=1, help="ΔT of the reference point that other (α, ΔT) are compared with (α = 0.3).")]
        = SparsityConfig.update_interval,
    published_dataset: Annotated[Optional[str], typer.Option(
        help="Hold runs on synthetic data against the report's numbers for this dataset (cifar10, cifar100): "
             "a study's smaller sizes train on synthetic data in its place.")] = None,
) -> None:
    """Table 2 (mean ± std over seeds, with FLOPs), the comparisons behind the report's findings
    (differences with 95% Welch intervals and verdicts) and figures from every finished run under
    ROOT: printed, and saved as ROOT/report.md, report.csv, comparisons.csv, runs.csv and figures/*.png."""
    console = terminal.make_console()
    with terminal.user_errors(console):
        if published_dataset not in (None, "cifar10", "cifar100"):
            raise runs.UsageError(f"--published-dataset must be cifar10 or cifar100, got {published_dataset!r}")
        report.make_report(root, console, reference_interval, published_dataset)


@app.command("bench")
def bench_command(
    models: Annotated[str, typer.Option(
        help="Comma-separated: wrn-22-2 (CIFAR shapes), resnet50 (ImageNet shapes).",
    )] = ",".join(bench.MODELS),
    methods: Annotated[str, typer.Option(
        help="Comma-separated sparse methods, each timed beside dense.")] = "static,set,rigl,snfs",
    density: DensityOption = SparsityConfig.density,
    update_interval: Annotated[int, typer.Option(
        help="ΔT: steps per timed window, one of them a mask update.")] = SparsityConfig.update_interval,
    batch_size: Annotated[int, typer.Option(help="Batch; 0 = 128 for wrn-22-2, 32 for resnet50.")] = 0,
    repeats: Annotated[int, typer.Option(
        help="Rounds of dense and every method in turn; the median is kept.")] = 3,
    device: DeviceOption = TrainConfig.device,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object instead of the table.")] = False,
    inference: Annotated[bool, typer.Option(
        "--inference", help="Time CPU inference instead: dense, channels_last, per-layer sparse kernels, "
        "ONNX Runtime (rigl_harness/deploy/inference.py).")] = False,
    threads: Annotated[int, typer.Option(help="--inference: CPU threads.")] = 1,
    layers: Annotated[bool, typer.Option(
        "--layers", help="--inference: also the per-layer table of which layers went sparse.")] = False,
) -> None:
    """Training step time of dense and of each sparse method, averaged over a ΔT window, one
    mask update alone, and peak memory, side by side in this process; ratios to dense."""
    console = terminal.make_console()
    if inference:
        return bench_inference(density, repeats, threads, layers, json_output, console)
    with terminal.user_errors(console):
        target = pick_device(device)
        rows = bench.bench_rows(list(comma_separated(models, str)), list(comma_separated(methods, str)),
                                density, update_interval, batch_size, repeats, target)
    if json_output:
        print(json.dumps({"device": str(target), "update_interval": update_interval, "density": density,
                          "repeats": repeats, "rows": rows}))
    else:
        bench.print_table(rows, target, update_interval, repeats, console)


def bench_inference(density: float, repeats: int, threads: int, layers: bool, json_output: bool,
                    console) -> None:
    """bench --inference: WRN-22-2 and ResNet-50 at d with ERK and uniform masks, timed by
    deploy/inference.py in one process."""
    with terminal.user_errors(console):
        rows = bench.bench_inference(density, threads=threads, repeats=repeats)
    if json_output:
        print(json.dumps({"density": density, "threads": threads, "repeats": repeats, "rows": rows}))
    else:
        bench.print_inference(rows, repeats, console, layers=layers)


@app.command("export")
def export_command(
    run_dir: Annotated[str, typer.Argument(help="A run directory (config.json, checkpoint.pt).")],
    fp16: Annotated[bool, typer.Option(help="Store the active values as fp16 (lossy, smaller).")] = False,
    onnx_sparse: Annotated[bool, typer.Option(
        help="model.onnx with sparse initializers (smaller; ONNX Runtime reads it, not every runtime "
        "does).")] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """RUN_DIR/model.compact.pt (bitmask + active values, lossless) and RUN_DIR/model.onnx,
    each checked against the masked network (deploy/export.py)."""
    console = terminal.make_console()
    with terminal.user_errors(console):
        result = export.export_run(run_dir, fp16, onnx_sparse)
    if json_output:
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}))
    else:
        export.print_export(result, console)
