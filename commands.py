"""The command line: train, flops, sweep, report, bench and export, each declared the way typer documents.

`app(rigl)` builds it. `rigl` is the rigl module that is running (rigl.main passes itself), so the
module is loaded once and stays the one source of what the commands use: SparsityConfig and its
defaults, the methods, the densities, the training loop. TrainConfig and the recipes come from
recipes.py.
"""

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

import bench
import distributed
import flops
import report
import runs
import sweep
import terminal
from data import DATASET_SHAPES
from models import build_model
from recipes import REPORT_STEPS, Dataset, Precision, TrainConfig, resolve_recipe


def app(rigl) -> typer.Typer:
    """python rigl.py train | flops | sweep | report | bench | export."""
    # A mask update replaces the optimizer step by design; with ΔT = 1 the first step is one, and
    # torch would warn that the learning-rate schedule stepped before the optimizer did.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
    commands = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="RigL and its baselines: `python rigl.py train --density 0.1`.")
    commands.command("train")(train_command(rigl))
    commands.command("flops")(flops_command(rigl))
    commands.command("sweep", context_settings={"allow_extra_args": True,
                                                "ignore_unknown_options": True})(sweep_command(rigl))
    commands.command("report")(report_command(rigl))
    commands.command("bench")(bench_command(rigl))
    commands.command("export")(export_command(rigl))
    return commands


# ---------------------------------------------------------------------------------------------
# train: every field of TrainConfig and SparsityConfig (but the seed, which is TrainConfig's)
# ---------------------------------------------------------------------------------------------


def train_command(rigl):
    S, T = rigl.SparsityConfig, TrainConfig  # their fields' defaults are the options' defaults

    def train_(
        method: Annotated[rigl.Method, typer.Option(help="How the masks change (README, Methods).")] = S.method,
        density: Annotated[float, typer.Option(help="d: overall fraction of conv/linear weights active.")] = S.density,
        distribution: Annotated[rigl.Distribution, typer.Option(help="How d is spread over layers.")] = S.distribution,
        erk_power_scale: Annotated[float, typer.Option(help="Exponent on the ERK scores (not ER's).")] = S.erk_power_scale,
        drop_fraction: Annotated[float, typer.Option(help="α: fraction of active weights replaced per update.")] = S.drop_fraction,
        update_interval: Annotated[int, typer.Option(help="ΔT: training steps between mask updates.")] = S.update_interval,
        t_end: Annotated[float, typer.Option(help="T_end, fraction of training; masks frozen after it.")] = S.t_end,
        t_start: Annotated[float, typer.Option(help="Pruning: fraction of training where it starts.")] = S.t_start,
        dense_layers: Annotated[Optional[str], typer.Option(help="Comma-separated layers kept dense outside the budget; '' for none. Default: the first for uniform, none for er/erk.")] = S.dense_layers,
        model: Annotated[Optional[str], typer.Option(help="wrn-D-K, resnet50-cifar or resnet50. Default: the dataset's recipe.")] = T.model,
        dataset: Annotated[Dataset, typer.Option(help="imagenet reads an ImageFolder tree (train/, val/).")] = T.dataset,
        data_dir: Annotated[str, typer.Option(help="Directory holding (or receiving) the dataset.")] = T.data_dir,
        epochs: Annotated[Optional[int], typer.Option(help="Epochs at 1×. Default: the recipe's (250 on CIFAR).")] = T.epochs,
        multiplier: Annotated[float, typer.Option(help="Train N× longer: epochs, lr milestones and T_end scale.")] = T.multiplier,
        batch_size: Annotated[Optional[int], typer.Option(help="Global batch. Default: the recipe's (128 on CIFAR).")] = T.batch_size,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate. Default: the recipe's.")] = T.lr,
        momentum: Annotated[float, typer.Option(help="Nesterov momentum of SGD.")] = T.momentum,
        weight_decay: Annotated[Optional[float], typer.Option(help="On parameters with ndim > 1. Default: the recipe's.")] = T.weight_decay,
        label_smoothing: Annotated[Optional[float], typer.Option(help="Default: the recipe's.")] = T.label_smoothing,
        warmup: Annotated[Optional[float], typer.Option(help="Linear warm-up, fraction of training. Default: the recipe's.")] = T.warmup,
        lr_milestones: Annotated[Optional[str], typer.Option(help="Comma-separated fractions of training where lr is multiplied by --lr-gamma.")] = T.lr_milestones,
        lr_gamma: Annotated[Optional[float], typer.Option(help="Learning-rate decay factor. Default: the recipe's.")] = T.lr_gamma,
        val_size: Annotated[int, typer.Option(help="Training images held out for validation; 0 trains on all.")] = T.val_size,
        train_subset: Annotated[int, typer.Option(help="Train on the first N training images (0: all).")] = T.train_subset,
        seed: Annotated[int, typer.Option(help="Seeds initialisation, data order, augmentation and masks.")] = T.seed,
        device: Annotated[str, typer.Option(help="auto (CUDA when available) | cpu | cuda | cuda:N.")] = T.device,
        precision: Annotated[Precision, typer.Option(help="Autocast of the forward pass; fp16 adds a gradient scaler.")] = T.precision,
        accumulate: Annotated[int, typer.Option(help="One optimizer step every N micro-batches of --batch-size.")] = T.accumulate,
        workers: Annotated[int, typer.Option(help="DataLoader processes for ImageNet.")] = T.workers,
        mask_from: Annotated[Optional[str], typer.Option(help="Lottery: a finished (pruning) run whose masks and initial weights are retrained.")] = T.mask_from,
        out: Annotated[Optional[str], typer.Option(help="Run directory. Default: runs/<dataset>-<model>-<method>-<distribution>-d<density>-s<seed>.")] = None,
        resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    ) -> None:
        """Train; the defaults are the report's CIFAR-10 WRN-22-2 RigL (ERK) run."""
        train_run(rigl, dict(locals()))
    return train_


def comma_separated(text: str | None, kind: type) -> tuple | None:
    """"0.3,0.7" -> (0.3, 0.7); None stays None (the field's default), "" is the empty tuple."""
    return None if text is None else tuple(kind(p.strip()) for p in text.split(",") if p.strip())


def configs_from_options(rigl, options: dict) -> tuple:
    """The train options as (TrainConfig, SparsityConfig), the dataset's recipe resolved."""
    values = {**options, "lr_milestones": comma_separated(options["lr_milestones"], float),
              "dense_layers": comma_separated(options["dense_layers"], str)}
    try:
        cfg = resolve_recipe(TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)}))
        sparse = {f.name: values[f.name] for f in dataclasses.fields(rigl.SparsityConfig) if f.name in values}
        return cfg, rigl.SparsityConfig(**{**sparse, "seed": cfg.seed})  # not extra_weights: our models need none
    except ValueError as error:  # "lr_gamma must ..." as the user wrote it: "--lr-gamma must ..."
        field, _, rule = str(error).partition(" must ")
        raise ValueError(f"--{field.replace('_', '-')} must {rule}" if field in values and rule else str(error)) from None


def train_run(rigl, options: dict) -> None:
    """One run into --out (default runs/<dataset>-<model>-<method>-<distribution>-d<density>-s<seed>),
    or the run there continued with --resume; a stop names what is saved."""
    console, out = terminal.make_console(), Path(options["out"] or "runs")

    def interrupted() -> str:
        if (out / "checkpoint.pt").exists():
            return f"interrupted: the last finished epoch is saved in {out}; continue with --resume"
        return "interrupted before the first epoch finished: nothing to resume"
    with terminal.user_errors(console, interrupted):
        cfg, sparse_cfg = configs_from_options(rigl, options)
        if not options["out"]:
            out = out / f"{cfg.dataset}-{cfg.model}-{sparse_cfg.method}-{sparse_cfg.distribution}-d{sparse_cfg.density}-s{cfg.seed}"
        rigl.start_run(cfg, sparse_cfg, out, options["resume"], console)


# ---------------------------------------------------------------------------------------------
# flops: what each method costs, per layer and as the columns of the report's Table 2
# ---------------------------------------------------------------------------------------------


def counted_model(rigl, model_name: str, dataset: str, width_scale: float = 1.0) -> tuple[dict, dict]:
    """(shapes, dense multiply-adds) of every masked weight of a freshly built model."""
    classes, size = DATASET_SHAPES[dataset]
    model = build_model(model_name, classes, width_scale=width_scale)
    weights = rigl.masked_weights(model)
    return {n: w.shape for n, w in weights.items()}, flops.dense_layer_macs(model, list(weights), size)


def method_flops(rigl, model_name: str, dataset: str, sparse_cfg, multiplier: float, counted=None) -> dict:
    """flops.flop_report of `model_name` trained by `sparse_cfg.method`, as `train` would run it:
    the same network (Small-Dense's width), densities and dense-gradient needs."""
    method = sparse_cfg.method
    shapes, dense_macs = counted or counted_model(rigl, model_name, dataset)
    common = dict(dense_gradient=rigl.DENSE_GRADIENT.get(method, "never"),
                  update_interval=sparse_cfg.update_interval, multiplier=multiplier)
    if method == "dense":
        return flops.flop_report(shapes, dense_macs, dict.fromkeys(shapes, 1.0), **common)
    if method == "small-dense":
        width = rigl.small_dense_width(model_name, DATASET_SHAPES[dataset][0], sparse_cfg)
        small_shapes, small_macs = counted_model(rigl, model_name, dataset, width)
        return flops.flop_report(small_shapes, small_macs, dict.fromkeys(small_shapes, 1.0),
                                 reference_macs=dense_macs, **common)
    # The distribution's allocation. For pruning it stands for the final masks (an estimate: the
    # report's pruning ranks globally, so only a run knows its final layer densities), and it
    # trains at their mean along the report's schedule.
    allocation = rigl.initial_densities(shapes, dataclasses.replace(sparse_cfg, method="static"))
    train_densities = None
    if method == "pruning":
        steps = REPORT_STEPS
        t0, t1 = int(sparse_cfg.t_start * steps), int(sparse_cfg.t_end * steps)
        train_densities = {n: rigl.mean_pruning_density(d, steps, t0, t1) for n, d in allocation.items()}
    return flops.flop_report(shapes, dense_macs, allocation, train_densities=train_densities, **common)


def table2_columns(rigl, model_name: str, dataset: str, sparse_cfg, multiplier: float) -> list[dict]:
    """Training and inference FLOPs ×dense of every method of the report's Table 2 at d."""
    counted = counted_model(rigl, model_name, dataset)
    cells = [("dense", "-")] + [(m, d) for d in ("uniform", "erk")
                                for m in ("static", "set", "rigl", "snfs", "pruning")] + [("small-dense", "-")]
    rows = []
    for method, distribution in cells:
        cfg = dataclasses.replace(sparse_cfg, method=method, distribution="erk" if distribution == "-" else distribution)
        result = method_flops(rigl, model_name, dataset, cfg, multiplier, counted)
        rows.append(dict(method=method, distribution=distribution, train_flops_ratio=result["train_flops_ratio"],
                         inference_flops_ratio=result["inference_flops_ratio"]))
    return rows


def flops_command(rigl):
    S, T = rigl.SparsityConfig, TrainConfig

    def flops_(
        method: Annotated[rigl.Method, typer.Option(help="Method whose training FLOPs are counted.")] = S.method,
        density: Annotated[float, typer.Option(help="d: overall fraction of conv/linear weights active.")] = S.density,
        distribution: Annotated[rigl.Distribution, typer.Option(help="How d is spread over layers.")] = S.distribution,
        update_interval: Annotated[int, typer.Option(help="ΔT: RigL pays a dense gradient once per ΔT + 1 steps.")] = S.update_interval,
        dense_layers: Annotated[Optional[str], typer.Option(help="Comma-separated layers kept dense outside the budget (the authors' scripts: conv1).")] = S.dense_layers,
        model: Annotated[Optional[str], typer.Option(help="Network. Default: the dataset's recipe.")] = T.model,
        dataset: Annotated[Dataset, typer.Option(help="Sets the input size and the number of classes.")] = T.dataset,
        multiplier: Annotated[float, typer.Option(help="Train N× longer (training FLOPs scale).")] = T.multiplier,
        json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    ) -> None:
        """FLOPs of a model at a density: per layer, inference, training per step, and Table 2's
        columns for every method (paper convention: multiplies and adds counted separately)."""
        console = terminal.make_console()
        with terminal.user_errors(console):
            cfg = resolve_recipe(T(model=model, dataset=dataset, multiplier=multiplier))
            sparse_cfg = S(method=method, density=density, distribution=distribution, update_interval=update_interval,
                           dense_layers=comma_separated(dense_layers, str))
            result = method_flops(rigl, cfg.model, dataset, sparse_cfg, multiplier)
            result["methods"] = table2_columns(rigl, cfg.model, dataset, sparse_cfg, multiplier)
        if json_output:
            print(json.dumps(result))
            return
        flops.print_flop_report(result, f"{cfg.model} on {dataset}, {method}, {distribution}, d = {density}, "
                                        f"×{multiplier}, ΔT = {update_interval}", console)
    return flops_


# ---------------------------------------------------------------------------------------------
# sweep: a grid of training runs (sweep.py), each by the training loop of rigl.py
# ---------------------------------------------------------------------------------------------


def train_options_of(ctx: typer.Context) -> dict:
    """The `train` options that follow a sweep's own, parsed by `train` itself (its defaults
    filled in); the grid's fields, --mask-from, --out and --resume are the sweep's to set."""
    train = ctx.parent.command.get_command(ctx.parent, "train")
    parsed = train.make_context("train", list(ctx.args), parent=ctx.parent)
    reserved = {field for field, _ in sweep.AXES.values()} | {"mask_from", "out", "resume"}
    given = [n for n in parsed.params if n in reserved and parsed.get_parameter_source(n).name == "COMMANDLINE"]
    if given:
        raise runs.UsageError(f"sweep sets {', '.join('--' + n.replace('_', '-') for n in given)} for each "
                              f"cell: use its grid options (--methods, --densities, --seeds, ...)")
    return parsed.params


def cell_configs(rigl, options: dict, cell: dict, root: Path, varied: set[str]) -> tuple:
    """One cell's configurations: the train options with the cell's values; a lottery cell
    retrains the masks of the matching pruning cell."""
    cfg, sparse_cfg = configs_from_options(rigl, {**options, **cell})
    if cell["method"] == "lottery":
        cfg = dataclasses.replace(cfg, mask_from=str(root / sweep.cell_name({**cell, "method": "pruning"}, varied)))
    return cfg, sparse_cfg


def run_grid(rigl, root: Path, grid: dict, options: dict, dry_run: bool, console) -> None:
    """Every cell's configuration checked first, then the cells trained one after another."""
    if "lottery" in grid["methods"] and "pruning" not in grid["methods"]:
        raise ValueError("lottery cells retrain the masks of pruning cells: add pruning to --methods")
    facts = report_facts(rigl)
    cells = sweep.cells(grid, facts)
    varied = sweep.varied_fields(grid, cells, {"drop_fraction": facts.alpha, "update_interval": facts.interval})
    configs = [cell_configs(rigl, options, cell, root, varied) for cell in cells]
    for cell, (cfg, sparse_cfg) in zip(cells, configs):  # a cell is done only with the settings asked for
        out = root / sweep.cell_name(cell, varied)
        saved = runs.read_json(out / "config.json") if (out / "config.json").exists() else None
        differences = runs.config_differences(saved, runs.run_config(cfg, sparse_cfg)) if saved else []
        if differences:
            raise runs.UsageError(f"{out} holds a run with other settings: {'; '.join(differences)}; "
                                  f"sweep into another ROOT")
    for i, (cell, (cfg, sparse_cfg)) in enumerate(zip(cells, configs), 1):
        out = root / sweep.cell_name(cell, varied)
        state = sweep.cell_state(out)
        console.print(f"[{i}/{len(cells)}] {out.name}: {state}", highlight=False)
        if not dry_run and state != "done":
            rigl.start_run(cfg, sparse_cfg, out, state == "resume", console)


def sweep_command(rigl):
    S, T = rigl.SparsityConfig, TrainConfig

    def sweep_(
        ctx: typer.Context,
        root: Annotated[str, typer.Argument(help="Directory that receives one run directory per cell (give it first).")],
        methods: Annotated[str, typer.Option(help="Comma-separated values of --method.")] = S.method,
        densities: Annotated[str, typer.Option(help="Comma-separated values of --density.")] = str(S.density),
        distributions: Annotated[str, typer.Option(help="Comma-separated values of --distribution.")] = S.distribution,
        seeds: Annotated[str, typer.Option(help="Comma-separated values of --seed.")] = str(T.seed),
        multipliers: Annotated[str, typer.Option(help="Comma-separated values of --multiplier.")] = str(T.multiplier),
        drop_fractions: Annotated[str, typer.Option(help="Comma-separated values of --drop-fraction (α).")] = str(S.drop_fraction),
        update_intervals: Annotated[str, typer.Option(help="Comma-separated values of --update-interval (ΔT).")] = str(S.update_interval),
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and their state; train nothing.")] = False,
    ) -> None:
        """Run a grid of training runs one after another into ROOT, one run directory per cell;
        finished cells are skipped and an interrupted one resumes, so a killed sweep restarts where
        it stopped. Every other `train` option (python rigl.py train --help) applies to all cells."""
        grid_options, console = dict(locals()), terminal.make_console()
        with terminal.user_errors(console, lambda: "interrupted: rerun the same sweep to continue where it stopped"):
            options, grid = train_options_of(ctx), sweep.parse_grid(grid_options)
            empty = [axis for axis, values in grid.items() if not values]
            if empty:
                raise ValueError(f"--{empty[0].replace('_', '-')} needs at least one value")
            run_grid(rigl, Path(root), grid, options, dry_run, console)
    return sweep_


# ---------------------------------------------------------------------------------------------
# report and bench
# ---------------------------------------------------------------------------------------------


def report_facts(rigl) -> report.MethodFacts:
    """What report.py must know of the methods, from their definitions in rigl.py."""
    return report.MethodFacts(unmasked=rigl.UNMASKED, uses_alpha=rigl.DROP_AND_GROW,
                              uses_interval=rigl.DROP_AND_GROW + ("pruning",),
                              alpha=rigl.SparsityConfig.drop_fraction,
                              interval=rigl.SparsityConfig.update_interval)


def report_command(rigl):
    facts = report_facts(rigl)

    def report_(root: Annotated[str, typer.Argument(help="Directory holding finished runs.")]) -> None:
        """Table 2 (mean ± std over seeds, with FLOPs) and figures from every finished run under
        ROOT: printed, and saved as ROOT/report.md, ROOT/report.csv and ROOT/figures/*.png."""
        console = terminal.make_console()
        with terminal.user_errors(console):
            report.make_report(root, console, facts)
    return report_


def bench_rows(rigl, names: list[str], methods: list[str], density: float, update_interval: int,
               batch_size: int, repeats: int, device) -> list[dict]:
    """bench.compare for every model, with rigl's Sparsity as the holder under test."""
    for method in methods:
        rigl.SparsityConfig(method=method, density=density, update_interval=update_interval)  # clear errors
    unknown = [n for n in names if n not in bench.MODELS]
    if unknown or not names or not methods:
        raise ValueError(f"--models takes some of {', '.join(bench.MODELS)} and --methods at least one "
                         f"method, got {', '.join(unknown) or 'none'}")
    if batch_size < 0 or repeats < 1:
        raise ValueError(f"--batch-size must be >= 0 (0: the model's default) and --repeats >= 1, "
                         f"got {batch_size} and {repeats}")

    def make_sparsity(model, optimizer, method):
        config = rigl.SparsityConfig(method=method, density=density, update_interval=update_interval, t_end=1.0)
        return rigl.Sparsity(model, optimizer, config, total_steps=100 * update_interval)
    return [row for name in names for row in bench.compare(
        name, methods, batch_size or bench.MODELS[name][1], update_interval, repeats, device,
        make_sparsity, rigl.DROP_AND_GROW)]


def bench_inference(rigl, density: float, repeats: int, threads: int, layers: bool, json_output: bool,
                    console) -> None:
    """bench --inference: WRN-22-2 and ResNet-50 at d with ERK and uniform masks (rigl's initial
    ones), timed by sparse_inference.py in one process."""
    import sparse_inference

    def make_masks(model, distribution):
        config = rigl.SparsityConfig(method="static", density=density, distribution=distribution)
        return rigl.Sparsity(model, None, config, total_steps=1).masks
    with terminal.user_errors(console):
        if repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {repeats}")
        rows = sparse_inference.bench_inference(make_masks, threads=threads, repeats=repeats)
    if json_output:
        print(json.dumps({"density": density, "threads": threads, "repeats": repeats, "rows": rows}))
    else:
        sparse_inference.print_inference(rows, repeats, console, layers=layers)


def export_command(rigl):
    def export_(
        run_dir: Annotated[str, typer.Argument(help="A run directory (config.json, checkpoint.pt).")],
        fp16: Annotated[bool, typer.Option(help="Store the active values as fp16 (lossy, smaller).")] = False,
        onnx_sparse: Annotated[bool, typer.Option(help="model.onnx with sparse initializers (smaller; ONNX Runtime reads it, not every runtime does).")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
    ) -> None:
        """RUN_DIR/model.compact.pt (bitmask + active values, lossless) and RUN_DIR/model.onnx,
        each checked against the masked network (export.py)."""
        import export
        console = terminal.make_console()
        with terminal.user_errors(console):
            result = export.export_run(run_dir, fp16, onnx_sparse)
        if json_output:
            print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}))
        else:
            export.print_export(result, console)
    return export_


def bench_command(rigl):
    S, T = rigl.SparsityConfig, TrainConfig

    def bench_(
        models: Annotated[str, typer.Option(help="Comma-separated: wrn-22-2 (CIFAR shapes), resnet50 (ImageNet shapes).")] = ",".join(bench.MODELS),
        methods: Annotated[str, typer.Option(help="Comma-separated sparse methods, each timed beside dense.")] = "static,set,rigl,snfs",
        density: Annotated[float, typer.Option(help="Overall density d of the sparse methods (ERK).")] = S.density,
        update_interval: Annotated[int, typer.Option(help="ΔT: steps per timed window, one of them a mask update.")] = S.update_interval,
        batch_size: Annotated[int, typer.Option(help="Batch; 0 = 128 for wrn-22-2, 32 for resnet50.")] = 0,
        repeats: Annotated[int, typer.Option(help="Rounds of dense and every method in turn; the median is kept.")] = 3,
        device: Annotated[str, typer.Option(help="auto (CUDA when available) | cpu | cuda | cuda:N.")] = T.device,
        json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
        inference: Annotated[bool, typer.Option("--inference", help="Time CPU inference instead: dense, channels_last, per-layer sparse kernels, ONNX Runtime (sparse_inference.py).")] = False,
        threads: Annotated[int, typer.Option(help="--inference: CPU threads.")] = 1,
        layers: Annotated[bool, typer.Option("--layers", help="--inference: also the per-layer table of which layers went sparse.")] = False,
    ) -> None:
        """Training step time of dense and of each sparse method, averaged over a ΔT window, one
        mask update alone, and peak memory, side by side in this process; ratios to dense."""
        console = terminal.make_console()
        if inference:
            return bench_inference(rigl, density, repeats, threads, layers, json_output, console)
        with terminal.user_errors(console):
            target = distributed.pick_device(device)
            rows = bench_rows(rigl, [m.strip() for m in models.split(",") if m.strip()],
                              [m.strip() for m in methods.split(",") if m.strip()],
                              density, update_interval, batch_size, repeats, target)
        if json_output:
            print(json.dumps({"device": str(target), "update_interval": update_interval, "density": density,
                              "repeats": repeats, "rows": rows}))
        else:
            bench.print_table(rows, target, update_interval, repeats, console)
    return bench_
