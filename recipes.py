"""The training recipes: one run's settings (TrainConfig), each dataset's defaults, the lr schedule and SGD.

CIFAR follows the report (Sec. 3 and its code, "RR"); ImageNet follows the paper (Sec. 4.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import torch
from torch import nn

Dataset = Literal["cifar10", "cifar100", "imagenet", "synthetic"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtype each precision autocasts the forward pass to; fp32 runs without autocast."""
REPORT_STEPS = 87_891
"""Training steps of the report's CIFAR run: 250 epochs of 45,000 images at batch 128."""

INTEGER_FIELDS = {"epochs": 1, "batch_size": 1, "val_size": 0, "train_subset": 0, "workers": 0,
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
    seed: int = 0
    """Seeds the initialisation, data order, augmentation and masks."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""
    precision: Precision = "fp32"
    """fp32 | bf16 | fp16: autocast of the forward pass; fp16 adds a gradient scaler."""
    accumulate: int = 1
    """Gradient accumulation: one optimizer step every N micro-batches of --batch-size; ΔT, T_end
    and the learning-rate schedule count optimizer steps, and growth sees the accumulated gradient."""
    workers: int = 8
    """DataLoader worker processes for ImageNet (CIFAR is held in memory and needs none)."""
    mask_from: str | None = None
    """Lottery only: a finished run's directory (a pruning run) whose final masks and initial
    weights are retrained with a static mask (Frankle & Carbin 2019; report Sec. 4)."""

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
        if self.epochs is not None and round(self.epochs * self.multiplier) < 1:
            raise ValueError(f"--epochs {self.epochs} × --multiplier {self.multiplier} rounds to no epoch at all")
        if self.lr_milestones is not None:
            self.lr_milestones = tuple(self.lr_milestones)
            if not all(0 < m < 1 for m in self.lr_milestones):
                raise ValueError(f"lr_milestones must be fractions in (0, 1), got {self.lr_milestones}")


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
