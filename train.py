"""Training with RigL: the recipes, a run's parts, and one visible training loop.

Run:       python rigl.py train --density 0.1     (CIFAR-10, WRN-22-2, RigL, ERK, 250 epochs)
Recipes:   CIFAR follows the report (Sundar & Dwaraknath, ReScience C 7(2), 2021, Sec. 3 and its
           code, "RR"); ImageNet follows the paper (Evci et al., ICML 2020, Sec. 4.1).

The file reads: the recipe (TrainConfig, RECIPES, the learning-rate schedule, SGD); a run's parts
(Run, build_run); the loop (train: epochs, and in each the steps); evaluation and the end of an
epoch; start_run, which creates or resumes a run directory and trains. The algorithm is rigl.py;
data, run directories, torchrun and the terminal are in the rigl_harness package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

import flops
from flops import small_dense_width
from models import DATASET_SHAPES, build_model
from rigl import DROP_AND_GROW, UNMASKED, Sparsity, SparsityConfig, cosine_drop_fraction, masked_weights
from rigl_harness import distributed, runs, terminal
from rigl_harness.data import Data, batches, load_data, train_batch_count

Dataset = Literal["cifar10", "cifar100", "imagenet", "synthetic"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtype each precision autocasts the forward pass to; fp32 runs without autocast."""
INTEGER_FIELDS = {"epochs": 1, "batch_size": 1, "val_size": 0, "train_subset": 0, "test_subset": 0, "workers": 0,
                  "accumulate": 1, "seed": 0}
"""TrainConfig's integer fields (below) and the smallest value each may take."""
NUMBER_FIELDS = {
    "multiplier": ("multiplier > 0", lambda v: 0 < v < math.inf),
    "lr": ("lr > 0", lambda v: 0 < v < math.inf),
    "lr_gamma": ("lr_gamma > 0", lambda v: 0 < v < math.inf),
    "weight_decay": ("weight_decay >= 0", lambda v: 0 <= v < math.inf),
    "momentum": ("momentum >= 0 and <= 1", lambda v: 0 <= v <= 1),
    "label_smoothing": ("label_smoothing >= 0 and <= 1", lambda v: 0 <= v <= 1),
    "warmup": ("warmup >= 0 and <= 1", lambda v: 0 <= v <= 1),
}
"""TrainConfig's real-valued fields: the rule each must satisfy, as the error states it."""


def default_workers() -> int:
    """One DataLoader worker per CPU core, at most 8: --workers' default."""
    return min(8, os.cpu_count() or 1)


@dataclass
class TrainConfig:
    """One training run. Fields left at None take the dataset's recipe (RECIPES below)."""

    model: str | None = None
    """Network from models.py: wrn-D-K, resnet50-cifar or resnet50. Recipe: wrn-22-2 (CIFAR-10),
    resnet50-cifar (CIFAR-100), resnet50 (ImageNet), wrn-10-1 (synthetic)."""
    dataset: Dataset = "cifar10"
    """cifar10 | cifar100 | imagenet (an ImageFolder tree with train/ and val/) | synthetic."""
    data_dir: str = "data"
    """Directory holding (or receiving) the dataset."""
    epochs: int | None = None
    """Epochs at 1×. Recipe: 250 (CIFAR, report), 100 (ImageNet, paper), 5 (synthetic)."""
    multiplier: float = 1.0
    """Train N× longer: epochs, learning-rate milestones and T_end all scale (report's RigL 2×)."""
    batch_size: int | None = None
    """Recipe: 128 (CIFAR, report), 256 (ImageNet)."""
    lr: float | None = None
    """Peak learning rate. Recipe: 0.1 (CIFAR, report); 0.1 per 256 images (ImageNet, paper)."""
    momentum: float = 0.9
    """Nesterov momentum of SGD (report)."""
    weight_decay: float | None = None
    """L2 on parameters with ndim > 1 only. Recipe: 5e-4 (CIFAR-10), 1e-4 (CIFAR-100, ImageNet)."""
    label_smoothing: float | None = None
    """Recipe: 0 (CIFAR-10), 0.1 (CIFAR-100, ImageNet)."""
    warmup: float | None = None
    """Linear warm-up as a fraction of training. Recipe: 0; CIFAR-100 1,760 of 87,891 steps (RR)."""
    lr_milestones: tuple[float, ...] | None = None
    """Fractions of training at which lr is multiplied by lr_gamma. Recipe: every 30,000 of the
    report's 87,891 steps (CIFAR-10), every 20,000 (CIFAR-100), epochs 30/70/90 of 100 (ImageNet)."""
    lr_gamma: float | None = None
    """Learning-rate decay factor. Recipe: 0.2 (CIFAR, report), 0.1 (ImageNet)."""
    val_size: int = 5000
    """Training images held out for validation (report: 5,000); 0 trains on all 50k (paper Table 1)."""
    train_subset: int = 0
    """Train on the first N training images (0: all); for synthetic, the generated training set size."""
    test_subset: int = 0
    """Test on the first N test images (0: all 10,000); a quick check, whose test accuracy is not the report's."""
    seed: int = 0
    """Seeds the initialisation, data order, augmentation and masks."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""
    precision: Precision = "fp32"
    """fp32 | bf16 | fp16: autocast of the forward pass; fp16 adds a gradient scaler."""
    accumulate: int = 1
    """Gradient accumulation: one optimizer step every N micro-batches of --batch-size; ΔT, T_end
    and the learning-rate schedule count optimizer steps, and growth sees the accumulated gradient."""
    workers: int = default_workers()
    """DataLoader worker processes for ImageNet (CIFAR is held in memory and needs none): one per CPU
    core, at most 8. Each augments with its own random stream, so an ImageNet run resumes with its own."""
    masks_from: str | None = None
    """A finished run's directory: start from its exact final masks, with fresh weights unless
    --init-from (the report's Table 5 restart; lottery's ticket)."""
    densities_from: str | None = None
    """A finished run's directory: fresh random masks at its final per-layer densities."""
    init_from: str | None = None
    """A run's directory: start from its initial weights (init.pt); lottery takes the pruning run's."""
    match_flops: Literal["uniform"] | None = None
    """Train at the density whose inference FLOPs under --distribution equal uniform's at --density."""

    def __post_init__(self) -> None:
        for field, choices in (("dataset", Dataset), ("precision", Precision)):
            if getattr(self, field) not in get_args(choices):
                raise ValueError(f"{field} must be one of {' | '.join(get_args(choices))}, "
                                 f"got {getattr(self, field)!r}")
        for field, low in INTEGER_FIELDS.items():
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or not low <= value < 2**63):
                raise ValueError(f"{field} must be an integer >= {low} (and < 2**63), got {value!r}")
        for field, (rule, within) in NUMBER_FIELDS.items():
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not within(value)):
                raise ValueError(f"{field} must satisfy {rule}, got {value!r}")
        if self.train_subset and self.val_size > self.train_subset:
            raise ValueError(f"--val-size {self.val_size} holds out more images than --train-subset "
                             f"{self.train_subset} trains on, and evaluating them every epoch would take longer "
                             f"than the training: give --val-size {max(1, self.train_subset // 10)} (or 0)")
        if self.epochs is not None and round(self.epochs * self.multiplier) < 1:
            raise ValueError(f"--epochs {self.epochs} × --multiplier {self.multiplier} rounds to no epoch at all")
        if self.masks_from is not None and self.densities_from is not None:
            raise ValueError("--masks-from and --densities-from are two ways to start the masks: give one")
        if self.match_flops not in (None, "uniform"):
            raise ValueError(f"match_flops must be uniform or None, got {self.match_flops!r}")
        if self.lr_milestones is not None:
            self.lr_milestones = tuple(self.lr_milestones)
            if not all(0 < m < 1 for m in self.lr_milestones):
                raise ValueError(f"lr_milestones must be fractions in (0, 1), got {self.lr_milestones}")


REPORT_STEPS = 87_891
"""Training steps of the report's CIFAR run: 250 epochs of 45,000 images at batch 128 (RR's count)."""


def _every(interval: int, total: int = REPORT_STEPS) -> tuple[float, ...]:
    """Milestones 'every `interval` steps' of the report's run, as fractions of training."""
    return tuple(m / total for m in range(interval, total, interval))


RECIPES: dict[str, dict] = {
    "cifar10": dict(model="wrn-22-2", epochs=250, batch_size=128, lr=0.1, weight_decay=5e-4,
                    label_smoothing=0.0, warmup=0.0, lr_milestones=_every(30_000), lr_gamma=0.2),
    "cifar100": dict(model="resnet50-cifar", epochs=250, batch_size=128, lr=0.1, weight_decay=1e-4,
                     label_smoothing=0.1, warmup=1760 / REPORT_STEPS, lr_milestones=_every(20_000),
                     lr_gamma=0.2),
    "imagenet": dict(model="resnet50", epochs=100, batch_size=256, lr=None, weight_decay=1e-4,
                     label_smoothing=0.1, warmup=0.0, lr_milestones=(0.3, 0.7, 0.9), lr_gamma=0.1),
    "synthetic": dict(model="wrn-10-1", epochs=5, batch_size=128, lr=0.1, weight_decay=5e-4,
                      label_smoothing=0.0, warmup=0.0, lr_milestones=_every(30_000), lr_gamma=0.2),
}


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """Fill every None field from the dataset's recipe; ImageNet's lr is 0.1 × batch / 256."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for field, default in RECIPES[cfg.dataset].items():
        if values[field] is None:
            values[field] = default
    if values["lr"] is None:
        values["lr"] = 0.1 * values["batch_size"] / 256
    return replace(cfg, **values)


def lr_factor(step: int, total_steps: int, warmup: float, milestones: tuple[float, ...],
              gamma: float) -> float:
    """Linear warm-up over the first `warmup` of training, then ×gamma at every milestone passed."""
    warm = warmup * total_steps
    if step < warm:
        return (step + 1) / warm
    return gamma ** sum(step >= m * total_steps for m in milestones)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay only on parameters with ndim > 1 (report)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


# ---------------------------------------------------------------------------------------------
# A run's parts
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Run:
    """Everything a training run holds; build_run makes it, and state_dict() is its checkpoint:
    load_state_dict() continues it as if it had never stopped."""

    cfg: TrainConfig  # resolved
    sparse_cfg: SparsityConfig  # resolved (resolve_sparsity)
    data: Data
    device: torch.device
    model: nn.Module
    ddp_model: nn.Module  # the model's DistributedDataParallel wrapper under torchrun, else the model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sparsity: Sparsity
    generator: torch.Generator  # data order and augmentation
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    epochs: int
    tally: flops.FlopTally  # training FLOPs so far
    dense_macs: dict  # dense multiply-adds per masked layer and sample
    f_dense: float  # forward FLOPs per sample of the dense network (paper's count)
    f_sparse: float = 0.0  # forward FLOPs per sample with the current masks
    epoch: int = 0  # epochs finished
    step: int = 0  # training steps taken (a mask update is one, in place of the optimizer step)
    elapsed: float = 0.0  # seconds of training
    eval_elapsed: float = 0.0  # seconds of evaluation (validation and test sets, after each epoch)
    history: list = dataclasses.field(default_factory=list)  # metrics.jsonl: one record per epoch
    layer_history: list = dataclasses.field(default_factory=list)  # densities.jsonl: at epoch 0 and after each

    def state_dict(self) -> dict:
        """Model, optimizer, lr schedule, masks, FLOP tally, every RNG state, epoch, step and history."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sparsity": self.sparsity.state_dict(),
                "data_rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": self.scaler.state_dict(), "flops": self.tally.state_dict(),
                "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed, "eval_elapsed": self.eval_elapsed,
                "history": self.history, "layer_history": self.layer_history}

    def load_state_dict(self, state: dict) -> None:
        """The inverse of state_dict(); a checkpoint that does not fit is one line (runs.UsageError)."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sparsity.load_state_dict(state["sparsity"])
            self.generator.set_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.tally.load_state_dict(state["flops"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
            self.eval_elapsed = state["eval_elapsed"]
            self.history, self.layer_history = state["history"], state["layer_history"]
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise runs.UsageError(f"the checkpoint does not fit this run ({type(error).__name__}: {first_line})") from None
        self.f_sparse = forward_flops(self)

    def summary(self) -> dict:
        """summary.json: final accuracies, the final masks, and the FLOPs actually spent (a training
        ratio is relative to the dense model trained on the 1× schedule)."""
        vals = [r["val_acc"] for r in self.history if r["val_acc"] is not None]
        # dense training on the 1× schedule: 3 f_D per image (forward and two backward passes)
        dense_1x = flops.sparse_train_flops(self.f_dense) * self.data.num_train * self.epoch / self.cfg.multiplier
        return {"final_val_acc": self.history[-1]["val_acc"], "final_test_acc": self.history[-1]["test_acc"],
                "best_val_acc": max(vals) if vals else None, "epochs": self.epoch, "steps": self.step,
                "wall_time": round(self.elapsed, 3), "eval_time": round(self.eval_elapsed, 3),
                "density": self.sparsity.total_row()["density"],
                "explored": self.sparsity.exploration_rate(), "layers": self.sparsity.layer_stats(),
                "train_flops": self.tally.total, "train_flops_ratio": self.tally.total / dense_1x,
                "inference_flops": self.f_sparse, "inference_flops_ratio": self.f_sparse / self.f_dense,
                "flops_convention": flops.CONVENTION}


def build_run(cfg: TrainConfig, sparse_cfg: SparsityConfig) -> Run:
    """Data, model, optimizer, learning-rate schedule and masks of resolved configurations: the
    dataset's recipe (resolve_recipe) and the run's sources (resolve_sparsity), each resolved once."""
    device = distributed.pick_device(cfg.device)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.train_subset, cfg.val_size, cfg.seed, cfg.test_subset)
    torch.manual_seed(cfg.seed)
    width = small_dense_width(cfg.model, data.num_classes, sparse_cfg) if sparse_cfg.method == "small-dense" else 1.0
    model = build_model(cfg.model, num_classes=data.num_classes, width_scale=width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    # one optimizer step per --accumulate micro-batches; ×N epochs for N× longer training
    steps_per_epoch = math.ceil(train_batch_count(data, cfg.batch_size) / cfg.accumulate)
    check_steps(cfg, data, steps_per_epoch)
    epochs = round(cfg.epochs * cfg.multiplier)  # at least 1 (TrainConfig checks it)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, cfg.warmup, cfg.lr_milestones, cfg.lr_gamma))
    sparsity = Sparsity(model, optimizer, sparse_cfg, total_steps=total)
    start_from_sources(cfg, sparse_cfg, model, sparsity)
    data.to(device)
    dense_macs, f_dense = dense_flops(cfg, data.num_classes, model, list(sparsity.weights), width)
    run = Run(cfg=cfg, sparse_cfg=sparse_cfg, data=data, device=device, model=model,
              ddp_model=distributed.wrap(model, device), optimizer=optimizer, scheduler=scheduler,
              sparsity=sparsity, generator=torch.Generator(device=device).manual_seed(cfg.seed),
              scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
              steps_per_epoch=steps_per_epoch, epochs=epochs, tally=flops.FlopTally(),
              dense_macs=dense_macs, f_dense=f_dense,
              layer_history=[{"epoch": 0, "densities": sparsity.densities()}])
    run.f_sparse = forward_flops(run)
    return run


def check_steps(cfg: TrainConfig, data: Data, steps_per_epoch: int) -> None:
    """Refuse a run in which some process would take no training step: under torchrun every rank
    needs at least one image of each --batch-size, and an epoch needs at least one batch."""
    ranks = distributed.world()[1]
    if cfg.batch_size < ranks:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {ranks} torchrun processes: "
                         f"each needs at least one image per step")
    if steps_per_epoch < 1:
        raise ValueError(f"{data.num_train} training images (--train-subset {cfg.train_subset}, --val-size "
                         f"{cfg.val_size}) make no batch of --batch-size {cfg.batch_size} on {ranks} process(es)")


def check_sources(cfg: TrainConfig, sparse_cfg: SparsityConfig) -> None:
    """Which methods may start from another run: lottery needs --masks-from and --init-from
    (Frankle & Carbin 2019: the pruning run's final masks and its initial weights); masks and
    densities need a method that starts with masks; either fixes the density, as --match-flops would."""
    method, given = sparse_cfg.method, cfg.masks_from or cfg.densities_from
    if method == "lottery" and not (cfg.masks_from and cfg.init_from):
        raise ValueError("method lottery needs --masks-from RUN_DIR and --init-from RUN_DIR (the pruning run's "
                         "final masks and initial weights)")
    if given and method in UNMASKED + ("pruning",):
        raise ValueError(f"--masks-from and --densities-from set the initial masks, and method {method} "
                         f"starts without masks")
    if given and cfg.match_flops:
        raise ValueError("--match-flops solves for a density, and --masks-from or --densities-from take their "
                         "run's: give one")


def resolve_sparsity(cfg: TrainConfig, sparse_cfg: SparsityConfig) -> SparsityConfig:
    """The SparsityConfig a run trains with, from the one asked for: --densities-from's per-layer
    densities as layer_densities, --match-flops's solved density."""
    check_sources(cfg, sparse_cfg)
    if cfg.densities_from:
        layer_densities = runs.read_final_densities(Path(cfg.densities_from), cfg.model, cfg.dataset, sparse_cfg)
        if sparse_cfg.layer_densities not in (None, layer_densities):
            raise ValueError("--densities-from sets the per-layer densities: give it or --layer-densities, not both")
        return replace(sparse_cfg, layer_densities=layer_densities)
    if cfg.match_flops:
        return replace(sparse_cfg, density=flops.matching_density(cfg.model, cfg.dataset, sparse_cfg, cfg.match_flops))
    return sparse_cfg


def run_config(cfg: TrainConfig, asked: SparsityConfig, resolved: SparsityConfig) -> dict:
    """config.json of a run: the resolved configurations, and under "derived_from" what the masks,
    weights and density came from (runs.source_record; --match-flops's asked-for density)."""
    config = runs.run_config(cfg, resolved)
    derived = {option: runs.source_record(Path(getattr(cfg, option)), "--" + option.replace("_", "-"),
                                          cfg.model, cfg.dataset)
               for option in ("masks_from", "densities_from", "init_from") if getattr(cfg, option)}
    if cfg.match_flops:
        derived["match_flops"] = {"target": cfg.match_flops, "density": asked.density}
    return {**config, "derived_from": derived} if derived else config


def start_from_sources(cfg: TrainConfig, sparse_cfg: SparsityConfig, model: nn.Module, sparsity: Sparsity) -> None:
    """--init-from's initial weights, then --masks-from's final masks, which must have the density
    of that run's summary.json (runs.read_final_masks)."""
    if cfg.init_from:
        init = runs.read_init(Path(cfg.init_from), cfg.model, cfg.dataset)
        fit(lambda: model.load_state_dict(init), "--init-from", cfg.init_from, cfg.model)
    if cfg.masks_from:
        masks, final_density = runs.read_final_masks(Path(cfg.masks_from), cfg.model, cfg.dataset, sparse_cfg)
        fit(lambda: sparsity.set_masks(masks), "--masks-from", cfg.masks_from, cfg.model)
        density = sparsity.total_row()["density"]
        if abs(density - final_density) > 1e-9:
            raise runs.UsageError(f"--masks-from {cfg.masks_from}: its checkpoint's masks have density {density:.4f}, "
                                  f"not the {final_density:.4f} of its summary.json: they are not its final masks")


def fit(load, option: str, source: str, model_name: str) -> None:
    """Run `load`; a state that does not fit the model is one line naming the option."""
    try:
        load()
    except (RuntimeError, ValueError, AttributeError) as error:
        raise runs.UsageError(f"{option} {source}: its weights or masks do not fit {model_name} "
                              f"({type(error).__name__})") from None


def dense_flops(cfg: TrainConfig, num_classes: int, model: nn.Module, names: list[str],
                width: float) -> tuple[dict, float]:
    """The dense multiply-adds of each masked layer of `model`, and f_D, the forward FLOPs of the
    full-width dense network (Small-Dense is compared with the network it stands in for)."""
    size = DATASET_SHAPES[cfg.dataset][1]
    macs = full_macs = flops.dense_layer_macs(model, names, size)
    if width != 1.0:
        with torch.random.fork_rng():  # the training's random numbers stay those of a run without it
            full = build_model(cfg.model, num_classes)
        full_macs = flops.dense_layer_macs(full, list(masked_weights(full)), size)
    return macs, flops.PAPER_FLOPS_PER_MAC * sum(full_macs.values())


def forward_flops(run: Run) -> float:
    """f_S of the current masks, per sample, in the paper's convention (flops.py)."""
    return flops.PAPER_FLOPS_PER_MAC * flops.sparse_forward_macs(run.dense_macs, run.sparsity.densities())


def autocast(run: Run):
    """Mixed precision of the forward pass (--precision); fp32 disables it."""
    dtype = AUTOCAST[run.cfg.precision]
    return torch.autocast(run.device.type, dtype or torch.bfloat16, enabled=dtype is not None)


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(run: Run, out: Path, console) -> dict:
    """Per epoch: the steps, then evaluation, one metrics line and a checkpoint. Per step: forward,
    backward, the mask update on update steps in place of the optimizer step, masks re-applied."""
    model, optimizer, sparsity, cfg = run.model, run.optimizer, run.sparsity, run.cfg
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    micro_batches = train_batch_count(run.data, cfg.batch_size)
    model.train()
    for epoch in range(run.epoch + 1, run.epochs + 1):
        started, losses, regrown, samples = time.perf_counter(), [], 0, 0
        data = batches(run.data, run.data.train, cfg.batch_size, run.device, run.generator, epoch - 1,
                       cfg.seed, cfg.workers)  # shuffled, and augmented on the device
        with terminal.epoch_progress(run, epoch, console) as show_progress:
            for i, (x, y, count) in enumerate(data):
                # forward and backward; --accumulate N adds up the gradients of N micro-batches
                with autocast(run):
                    loss = criterion(run.ddp_model(x), y) / micro_batches_in_step(i, cfg.accumulate, micro_batches)
                run.scaler.scale(loss).backward()          # fp16 scales the loss; otherwise a no-op
                losses.append(loss.detach())
                samples += count
                if (i + 1) % cfg.accumulate and i + 1 < micro_batches:
                    continue
                # RigL: on update steps, dropping and growing replace the optimizer step
                run.scaler.unscale_(optimizer)             # the mask update ranks the true gradients
                mask_update = sparsity.replaces_optimizer_step()
                if not mask_update:
                    run.scaler.step(optimizer)             # skipped by fp16 when gradients overflowed
                run.scaler.update()
                sparsity.apply_masks()                     # masked weights back to exactly 0
                optimizer.zero_grad(set_to_none=True)
                run.scheduler.step()
                run.step += 1
                run.tally.add(run.f_sparse, run.f_dense,  # the step's FLOPs, with a dense gradient if paid
                              flops.pays_dense_gradient(run.sparse_cfg.method, mask_update), samples)
                if sparsity.masks_changed:  # SNFS, RigL-SG/SM and pruning change layer densities
                    run.f_sparse = forward_flops(run)
                regrown, samples = regrown + (sparsity.last_update["grown"] if mask_update else 0), 0
                show_progress(loss)
        run.epoch, run.elapsed = epoch, run.elapsed + time.perf_counter() - started
        end_epoch(run, out, console, losses, regrown)
    return finish(run, out)


def finish(run: Run, out: Path) -> dict:
    """summary.json and the records it summarises, written by rank 0; every rank returns the summary."""
    summary = run.summary()
    if distributed.is_main_process():
        runs.save_final(out, summary, run.history, run.layer_history)
    distributed.wait_for_all()
    return summary


def micro_batches_in_step(i: int, accumulate: int, micro_batches: int) -> int:
    """How many micro-batches the optimizer step of micro-batch i adds up: --accumulate, or fewer
    for the epoch's last step; each loss is divided by it, so a step sees their mean gradient."""
    first = i - i % accumulate
    return min(accumulate, micro_batches - first)


@torch.no_grad()
def evaluate(run: Run, split) -> float | None:
    """Top-1 accuracy (%) on a split; None when there is no such split. Batches of the training
    batch size: on a CPU, batches of 1,000 images ran 2.5x slower than batches of 100."""
    if split is None:
        return None
    run.model.eval()
    correct = total = 0
    for x, y, _ in batches(run.data, split, run.cfg.batch_size, run.device, workers=run.cfg.workers):
        with autocast(run):
            correct += int((run.model(x).argmax(1) == y).sum())
        total += len(y)
    run.model.train()
    return 100.0 * correct / total


def end_epoch(run: Run, out: Path, console, losses: list, regrown: int) -> None:
    """Evaluate, print and record the finished epoch's metrics line, and save the checkpoint; under
    torchrun by rank 0 only, once every rank has checked that they agree. A run whose training
    loss is not finite stops here, its last good checkpoint kept."""
    # the mean training loss of a step: each micro-batch's loss is already divided by its step's count
    train_loss = float(functools.reduce(torch.add, losses, torch.zeros((), device=run.device))) / run.steps_per_epoch
    dynamic = run.sparse_cfg.method in DROP_AND_GROW
    alpha = cosine_drop_fraction(run.step, run.sparse_cfg.drop_fraction, run.sparsity.t_end)
    started = time.perf_counter()
    val_acc, test_acc = evaluate(run, run.data.val), evaluate(run, run.data.test)
    run.eval_elapsed += time.perf_counter() - started
    record = {"epoch": run.epoch, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
              "train_loss": train_loss if math.isfinite(train_loss) else None, "val_acc": val_acc,
              "test_acc": test_acc, "drop_fraction": alpha if dynamic else 0.0,
              "regrown": regrown, "explored": run.sparsity.exploration_rate(),
              "inference_flops_ratio": run.f_sparse / run.f_dense, "elapsed": round(run.elapsed, 3),
              "eval_elapsed": round(run.eval_elapsed, 3)}
    run.history.append(record)
    run.layer_history.append({"epoch": run.epoch, "densities": run.sparsity.densities()})
    console.print(terminal.format_record(record), soft_wrap=True, highlight=False)
    if not math.isfinite(train_loss):  # the metrics line (train_loss null) is kept, not the checkpoint
        raise diverged(run, out, losses)
    distributed.check_ranks_agree(run.sparsity, run.epoch)
    if distributed.is_main_process():
        runs.save_epoch(out, run.state_dict(), run.history, run.layer_history)


def diverged(run: Run, out: Path, losses: list) -> runs.Diverged:
    """The error that stops a run whose training loss is not finite, naming the first step that
    diverged. Its metrics (train_loss null) are saved; its checkpoint stays the last good one."""
    first = next(i for i, loss in enumerate(losses) if not torch.isfinite(loss))
    step = run.step - run.steps_per_epoch + first // run.cfg.accumulate + 1
    if distributed.is_main_process():
        runs.save_records(out, run.history, run.layer_history)
    kept = f"the checkpoint of epoch {run.epoch - 1} is kept" if run.epoch > 1 else "no epoch was saved"
    return runs.Diverged(f"diverged at step {step}: the training loss is not finite; {kept} (try a lower --lr)")


# ---------------------------------------------------------------------------------------------
# A run directory: python rigl.py train --density 0.1
# ---------------------------------------------------------------------------------------------


def start_run(cfg: TrainConfig, sparse_cfg: SparsityConfig, out: Path, resume: bool | None, console) -> dict:
    """Create or resume the run directory `out` of a resolved configuration and train, holding its
    lock (under torchrun every process trains; rank 0 locks, prints and writes). resume=None (a
    sweep's or tune's cell) takes the directory as it is under the lock: a finished run of the same
    settings is returned untouched, a checkpoint resumed, anything else started."""
    out, asked = Path(out), replace(sparse_cfg, seed=cfg.seed)  # one seed for the run and its masks
    sparse_cfg = resolve_sparsity(cfg, asked)
    config = run_config(cfg, asked, sparse_cfg)
    distributed.init(cfg.device)
    main = distributed.is_main_process()
    with runs.locked(out) if main else contextlib.nullcontext():
        if resume is None:
            resume = (out / "checkpoint.pt").exists()
            if (out / "summary.json").exists():
                runs.check_out_dir(out, config, resume)
                return runs.read_json(out / "summary.json")
        runs.check_out_dir(out, config, resume)
        run = build_run(cfg, sparse_cfg)
        console = console if main else terminal.silent_console()  # one rank speaks and writes
        if resume:
            run.load_state_dict(runs.load_checkpoint(out, run.device))
            console.print(f"resumed {out} at epoch {run.epoch}, step {run.step}")
        elif main:
            runs.start(out, config, run.model.state_dict())
        terminal.print_start(run, config, console)
        summary = train(run, out, console)
    terminal.print_done(summary, out, console)
    return summary
