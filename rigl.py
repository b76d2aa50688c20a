"""RigL: Rigging the Lottery, dynamic sparse training in one file.

Paper:     Evci, Gale, Menick, Castro, Elsen. "Rigging the Lottery: Making All Tickets Winners".
           ICML 2020, arXiv:1911.11134. Reference code: github.com/google-research/rigl ("TF").
Report:    Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021.
           Reference code: github.com/varun19299/rigl-reproducibility ("RR").
Baselines: SET (Mocanu et al. 2018), SNFS / sparse momentum (Dettmers & Zettlemoyer 2019),
           static sparsity, dense training.

Run:       python rigl.py train --density 0.1     (CIFAR-10, WRN-22-2, RigL, ERK, 250 epochs)
Target:    report Table 2, RigL (ERK) at d = 0.1: 92.4 ± 0.06 % test accuracy; at d = 0.2: 93.1 ± 0.09.
FLOPs:     python rigl.py flops --density 0.2     (flops.py; the paper's convention)

Use it from your own loop (README, "Add RigL to your training loop"):

    sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.1), total_steps)
    ...
    loss.backward()
    if not sparsity.step():       # on update steps the mask update replaces the optimizer step
        optimizer.step()
    sparsity.apply_masks()

Symbols of the paper and their names here:

    d        density            fraction of a layer's weights that are active (1 - sparsity)
    α        drop_fraction      fraction of active weights replaced at an update
    ΔT       update_interval    training steps between mask updates
    T_end    t_end              fraction of training after which the masks are frozen
    f_decay  cosine_drop_fraction   α_t = α/2 · (1 + cos(π t / T_end))
    ε        eps                the ER/ERK normaliser that meets the density budget

This part of the file (configuration, layer densities, masks, schedule, drop and grow, the
`Sparsity` holder) imports only torch and the standard library, so it can be copied on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import torch
from torch import nn

log = logging.getLogger("rigl")

Method = Literal["rigl", "set", "snfs", "static", "dense", "pruning", "rigl-sg", "rigl-sm",
                 "small-dense", "lottery"]
DROP_AND_GROW = ("rigl", "set", "snfs", "rigl-sg", "rigl-sm")
"""Methods that drop and regrow connections every ΔT steps until T_end."""
REDISTRIBUTING = {"snfs": "momentum", "rigl-sm": "momentum", "rigl-sg": "gradient"}
"""Methods that move layer budgets by the mean |momentum| or |gradient| of active weights."""
Distribution = Literal["uniform", "er", "erk"]
GrowInit = Literal["zeros"]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class SparsityConfig:
    """Every hyperparameter of sparse training, with the paper's defaults."""

    method: Method = "rigl"
    """rigl | set | snfs | static | dense | pruning | rigl-sg | rigl-sm | small-dense | lottery:
    how the masks change (paper Sec. 3; report Sec. 2; README "Methods")."""
    density: float = 0.1
    """d, overall fraction of active conv/linear weights; the report's Table 2 uses 0.1 and 0.2."""
    distribution: Distribution = "erk"
    """uniform | er | erk: how d is spread over layers (paper Sec. 3, "Sparsity Distribution")."""
    erk_power_scale: float = 1.0
    """Exponent on the ERK scores; 1.0 in the paper (TF flag `erk_power_scale`)."""
    drop_fraction: float = 0.3
    """α, fraction of active weights dropped and regrown per update; 0.3 (paper Sec. 4.1)."""
    update_interval: int = 100
    """ΔT, training steps between mask updates; 100 (paper Sec. 4.1)."""
    t_end: float = 0.75
    """T_end as a fraction of all training steps; masks are frozen after it. 0.75 (paper Sec. 4.1)."""
    t_start: float = 700 / 87_891
    """Pruning only: fraction of training at which gradual pruning starts; step 700 of 87,891 (RR)."""
    grow_init: GrowInit = "zeros"
    """Initial value of grown connections: zero, as in the paper (Sec. 3) and TF's default."""
    dense_layers: tuple[str, ...] | None = None
    """Weights kept dense and outside the budget. None = the distribution's default: the first
    layer for uniform (TF, RR), none for er/erk (their capping decides). () = none at all."""
    seed: int = 0
    """Seed of the mask generator: initial masks, tie-breaking, SET's random growth."""

    def __post_init__(self) -> None:
        _check_choice("method", self.method, Method)
        _check_choice("distribution", self.distribution, Distribution)
        _check_choice("grow_init", self.grow_init, GrowInit)
        _check_range("density", self.density, 0.0, 1.0, "0 < density <= 1", low_open=True)
        _check_range("drop_fraction", self.drop_fraction, 0.0, 1.0, "0 <= drop_fraction <= 1")
        _check_range("t_end", self.t_end, 0.0, 1.0, "0 < t_end <= 1", low_open=True)
        _check_range("t_start", self.t_start, 0.0, self.t_end, "0 <= t_start <= t_end")
        _check_range("erk_power_scale", self.erk_power_scale, 0.0, math.inf, "erk_power_scale >= 0")
        if isinstance(self.update_interval, bool) or not isinstance(self.update_interval, int) \
                or self.update_interval < 1:
            raise ValueError(f"update_interval must be an integer >= 1, got {self.update_interval!r}")
        if self.dense_layers is not None:
            self.dense_layers = tuple(self.dense_layers)


def _check_choice(field: str, value: object, choices: object) -> None:
    if value not in get_args(choices):
        allowed = " | ".join(get_args(choices))
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")


def _check_range(field: str, value: float, low: float, high: float, rule: str,
                 low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (low_open and value == low):
        raise ValueError(f"{field} must satisfy {rule}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Layer densities: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK)   (paper Sec. 3)
# ---------------------------------------------------------------------------------------------


def uniform_densities(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Every layer at the same density d."""
    return {name: density for name in shapes}


def er_score(shape: torch.Size) -> float:
    """ER (Mocanu et al. 2018): (n_in + n_out) / (n_in · n_out), on the channel dims only."""
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


def erk_score(shape: torch.Size) -> float:
    """ERK: (n_in + n_out + k_h + k_w) / (n_in · n_out · k_h · k_w); for a linear layer, ER."""
    return sum(shape) / math.prod(shape)


def erdos_renyi_densities(shapes: dict[str, torch.Size], density: float, kernel: bool = True,
                          power_scale: float = 1.0) -> dict[str, float]:
    """ER / ERK densities d_l = ε · score_l, meeting the budget of uniform density d.

    Solve Σ_l ε · score_l · n_l = d · Σ_l n_l for ε. If some ε · score_l > 1, the layers with the
    largest score become dense, leave the sum, and ε is solved again (TF sparse_utils.py,
    get_sparsities_erdos_renyi).
    """
    score = {name: (erk_score(s) if kernel else er_score(s)) ** power_scale for name, s in shapes.items()}
    numel = {name: math.prod(s) for name, s in shapes.items()}
    budget = density * sum(numel.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        if not sparse:
            return {name: 1.0 for name in shapes}
        # Σ_{l dense} n_l + ε Σ_{l sparse} score_l n_l = d Σ_l n_l
        eps = (budget - sum(numel[n] for n in dense)) / sum(score[n] * numel[n] for n in sparse)
        top = max(score[n] for n in sparse)
        if eps * top <= 1.0:
            return {name: 1.0 if name in dense else eps * score[name] for name in shapes}
        dense |= {name for name in sparse if score[name] == top}


def layer_densities(shapes: dict[str, torch.Size], config: SparsityConfig,
                    dense_layers: tuple[str, ...]) -> dict[str, float]:
    """Density of every masked weight: `dense_layers` at 1, the rest by the configured distribution."""
    sparse = {name: s for name, s in shapes.items() if name not in dense_layers}
    if config.method in ("dense", "small-dense", "pruning"):  # pruning starts dense
        densities = {name: 1.0 for name in sparse}
    elif config.distribution == "uniform":
        densities = uniform_densities(sparse, config.density)
    else:
        densities = erdos_renyi_densities(sparse, config.density, kernel=config.distribution == "erk",
                                          power_scale=config.erk_power_scale)
    return {name: 1.0 if name in dense_layers else densities[name] for name in shapes}


def masked_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights that carry masks: those of every Conv2d and Linear layer, in module order."""
    return {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def dense_layers_of(names: list[str], config: SparsityConfig) -> tuple[str, ...]:
    """The layers kept dense by choice: `config.dense_layers` (module or weight names), or by
    default the first layer for uniform (TF, RR) and none for ER/ERK (their capping decides)."""
    if config.dense_layers is None:
        return (names[0],) if config.distribution == "uniform" and names else ()
    resolved = tuple(n if n in names else f"{n}.weight" for n in config.dense_layers)
    unknown = [n for n, r in zip(config.dense_layers, resolved) if r not in names]
    if unknown:
        raise ValueError(f"dense_layers names no masked layer: {unknown}; the masked layers are {names}")
    return resolved


def model_densities(model: nn.Module, config: SparsityConfig) -> dict[str, float]:
    """Every masked weight's density under `config`, as `Sparsity` allocates it."""
    weights = masked_weights(model)
    shapes = {name: w.shape for name, w in weights.items()}
    return layer_densities(shapes, config, dense_layers_of(list(weights), config))


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def active_count(density: float, numel: int) -> int:
    """Exact number of active weights of a layer: round(d_l · n_l), at least one."""
    return max(1, round(density * numel))


def random_mask(shape: torch.Size, n_active: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask with exactly `n_active` True entries at uniformly random positions."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool, device=generator.device)
    mask[torch.randperm(numel, generator=generator, device=generator.device)[:n_active]] = True
    return mask.view(shape)


def top_k_mask(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """ArgTopK: a boolean mask of the k largest scores; ties broken uniformly at random.

    Every score above the k-th largest is taken; the rest of the k are drawn at random among the
    scores equal to it, so equal scores are never chosen by index order and unequal ones keep their
    exact order. (TF instead adds N(0, 1e-5) noise to the scores, which also reorders near-equal ones.)
    """
    flat = scores.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == 0:
        return mask.view_as(scores)
    threshold = flat.topk(k, sorted=False).values.min()
    mask |= flat > threshold
    tied = torch.nonzero(flat == threshold).squeeze(1)
    needed = k - int(mask.sum())
    mask[tied[torch.randperm(len(tied), generator=generator, device=flat.device)[:needed]]] = True
    return mask.view_as(scores)


# ---------------------------------------------------------------------------------------------
# Drop-fraction schedule   (paper Eq. 1)
# ---------------------------------------------------------------------------------------------


def cosine_drop_fraction(step: int, drop_fraction: float, t_end: int) -> float:
    """f_decay(t) = α/2 · (1 + cos(π t / T_end)) for t < T_end, and 0 from T_end on."""
    if step >= t_end:
        return 0.0
    return drop_fraction / 2 * (1 + math.cos(math.pi * step / t_end))


def pruning_density(step: int, final_density: float, t_start: int, t_end: int) -> float:
    """Gradual magnitude pruning (Zhu & Gupta 2017): density 1 until t0, then
    s(t) = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))³ with s_i = 0, and d_f from t1 on."""
    if step <= t_start:
        return 1.0
    if step >= t_end:
        return final_density
    s_f = 1.0 - final_density
    # s(t) = s_f + (0 - s_f) · (1 - (t - t0)/(t1 - t0))³
    sparsity = s_f - s_f * (1.0 - (step - t_start) / (t_end - t_start)) ** 3
    return 1.0 - sparsity


def is_pruning_step(step: int, update_interval: int, t_start: int, t_end: int) -> bool:
    """Gradual pruning prunes every ΔT steps after t0, and once more at T_end to hit d exactly."""
    return t_start < step <= t_end and ((step - t_start) % update_interval == 0 or step == t_end)


def is_update_step(step: int, update_interval: int, t_end: int) -> bool:
    """Masks change at t = ΔT, 2ΔT, ... while t < T_end (t counts training steps from 1)."""
    return step % update_interval == 0 and step < t_end


# ---------------------------------------------------------------------------------------------
# Drop and grow   (paper Sec. 3, Algorithm 1)
# ---------------------------------------------------------------------------------------------


def drop_mask(weight: torch.Tensor, mask: torch.Tensor, k: int,
              generator: torch.Generator) -> torch.Tensor:
    """Drop: of the active weights, remove the k with the smallest |w|; returns those kept.

    kept = ArgTopK(|w| over active, n_active - k)
    """
    n_keep = int(mask.sum()) - k
    return top_k_mask(weight.abs().masked_fill(~mask, -math.inf), n_keep, generator)


def grow_mask(scores: torch.Tensor, kept: torch.Tensor, k: int,
              generator: torch.Generator) -> torch.Tensor:
    """Grow: of the connections not kept, add the k with the largest score; returns those grown.

    grown = ArgTopK(score over ¬kept, k); a connection dropped in this update may come back.
    RigL's score is |∂L/∂w|, SET's is uniform noise, SNFS's is |momentum|.
    """
    return top_k_mask(scores.masked_fill(kept, -math.inf), k, generator)


def redistribute(total: int, layer_scores: dict[str, float],
                 capacity: dict[str, int]) -> dict[str, int]:
    """SNFS redistribution: split `total` regrowth over layers in proportion to their scores.

    n_l = total · score_l / Σ score, with score_l the mean |momentum| of the layer's active weights
    (Dettmers & Zettlemoyer 2019, Algorithm 1). A layer offered more than its free capacity is
    filled and the rest is shared among the others; shares are rounded by largest remainder, so
    the result sums to exactly `total` (which must not exceed the total capacity).
    """
    score = {n: s if math.isfinite(s) and s > 0 else 0.0 for n, s in layer_scores.items()}
    grow = {n: 0 for n in score}
    open_layers = [n for n in score if capacity[n] > 0]
    left, share = total, {}
    while open_layers:
        norm = sum(score[n] for n in open_layers)
        share = {n: left * (score[n] / norm if norm > 0 else 1 / len(open_layers)) for n in open_layers}
        full = [n for n in open_layers if share[n] >= capacity[n]]
        if not full:
            break
        for n in full:
            grow[n] = capacity[n]
            left -= capacity[n]
        open_layers = [n for n in open_layers if n not in full]
    floors = {n: math.floor(share[n]) for n in open_layers}
    by_remainder = sorted(open_layers, key=lambda n: share[n] - floors[n], reverse=True)
    for i, n in enumerate(by_remainder):
        grow[n] = floors[n] + (1 if i < left - sum(floors.values()) else 0)
    return grow


# ---------------------------------------------------------------------------------------------
# The holder: masks, counters and the mask generator, driven from the user's training loop
# ---------------------------------------------------------------------------------------------


class Sparsity:
    """Sparse training of a model's Conv2d and Linear weights by `config.method`.

    Build it after the model is on its device and the optimizer exists, then per training step:
    `loss.backward()`; `if not sparsity.step(): optimizer.step()`; `sparsity.apply_masks()`.
    `total_steps` is the number of training steps of the whole run (it fixes T_end).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 config: SparsityConfig, total_steps: int):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        self.config, self.optimizer, self.total_steps = config, optimizer, total_steps
        self.weights = masked_weights(model)
        if not self.weights:
            raise ValueError("the model has no Conv2d or Linear layer to make sparse")
        self.dense_layers = dense_layers_of(list(self.weights), config)
        self.densities = model_densities(model, config)
        self.t_end = int(config.t_end * total_steps)
        self.step_count = 0
        self.last_update = {"step": 0, "drop_fraction": 0.0, "grown": 0}
        device = next(iter(self.weights.values())).device
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        # A layer at density 1 carries no mask: for RigL and SET an update could only regrow what
        # it dropped, and layers forced dense stay dense under SNFS's redistribution too.
        self.masks = {name: random_mask(w.shape, active_count(self.densities[name], w.numel()),
                                        self.generator)
                      for name, w in self.weights.items() if self.densities[name] < 1.0}
        if config.method == "pruning":  # every layer not kept dense by choice is pruned, from dense
            self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()
                          if name not in self.dense_layers}
        self.t_start = int(config.t_start * total_steps)
        self.masks_changed = False
        self.apply_masks()
        self._log_dense_choice()

    def _log_dense_choice(self) -> None:
        if self.config.method in ("dense", "small-dense"):
            return
        capped = [n for n, d in self.densities.items() if d >= 1.0 and n not in self.dense_layers]
        log.info("dense by choice (outside the density budget): %s", list(self.dense_layers) or "none")
        log.info("dense by the %s capping: %s", self.config.distribution, capped or "none")

    # -- the training-loop interface ----------------------------------------------------------

    def step(self) -> bool:
        """Count one training step; call it after `loss.backward()`.

        On an update step (t = ΔT, 2ΔT, ... < T_end) the masks change and True is returned: the
        caller skips `optimizer.step()`, because in TF and RR the mask update replaces that step.
        Otherwise the gradients of masked weights are zeroed, so that the optimizer leaves masked
        weights and their momentum at zero (SNFS keeps dense gradients for its dense momentum).
        """
        self.step_count += 1
        cfg, t = self.config, self.step_count
        self.masks_changed = False
        if cfg.method in DROP_AND_GROW and is_update_step(t, cfg.update_interval, self.t_end):
            if not self.gradients_finite():  # e.g. an fp16 overflow: no ranking can be trusted
                log.warning("step %d: non-finite gradients, mask update skipped", t)
                self.mask_gradients()
                return False
            self.update_masks(cosine_drop_fraction(t, cfg.drop_fraction, self.t_end))
            self.masks_changed = True
            return True
        if cfg.method == "pruning" and is_pruning_step(t, cfg.update_interval, self.t_start, self.t_end):
            self.prune(pruning_density(t, cfg.density, self.t_start, self.t_end))
            self.masks_changed = True  # pruning needs no gradient: the optimizer step still runs
        if cfg.method != "snfs":
            self.mask_gradients()
        return False

    def gradients_finite(self) -> bool:
        return all(bool(torch.isfinite(self.gradient(name)).all()) for name in self.masks)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, mask in self.masks.items():
            grad = self.weights[name].grad
            if grad is not None:
                grad.mul_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Masked weights become exactly 0; call after every optimizer step."""
        for name, mask in self.masks.items():
            self.weights[name].mul_(mask)

    # -- the mask update ----------------------------------------------------------------------

    @torch.no_grad()
    def update_masks(self, drop_fraction: float) -> None:
        """One drop-and-grow update of every sparse layer with drop fraction α_t."""
        before = {name: int(mask.sum()) for name, mask in self.masks.items()}
        # k = floor(α_t · n_active)   (TF sparse_optimizers_base.py)
        n_drop = {name: math.floor(drop_fraction * n) for name, n in before.items()}
        kept = {name: drop_mask(self.weights[name], self.masks[name], n_drop[name], self.generator)
                for name in self.masks}
        n_grow = self._regrowth_counts(n_drop, kept)
        grown = 0
        for name in self.masks:
            new = grow_mask(self.grow_scores(name), kept[name], n_grow[name], self.generator)
            assert not (new & kept[name]).any(), "grown connections must come from the unkept"
            grown += self._replace_mask(name, kept[name] | new)
        self._check_counts(before)
        self.last_update = {"step": self.step_count, "drop_fraction": drop_fraction, "grown": grown}

    def _regrowth_counts(self, n_drop: dict[str, int], kept: dict[str, torch.Tensor]) -> dict[str, int]:
        """RigL and SET regrow what each layer dropped. SNFS and RigL-SM redistribute the total
        by the mean |momentum| of each layer's active weights, RigL-SG by their mean |gradient|."""
        statistic = REDISTRIBUTING.get(self.config.method)
        if statistic is None:
            return n_drop
        score = {name: (self.momentum(name) if statistic == "momentum" else self.gradient(name))
                 .abs()[mask].mean().item() for name, mask in self.masks.items()}
        capacity = {name: k.numel() - int(k.sum()) for name, k in kept.items()}
        return redistribute(sum(n_drop.values()), score, capacity)

    @torch.no_grad()
    def prune(self, density: float) -> None:
        """Gradual magnitude pruning: keep the round(d(t) · N) largest |w| over all pruned layers
        (global ranking, as the report's code); never grows."""
        names = list(self.masks)
        scores = torch.cat([self.weights[n].abs().masked_fill(~self.masks[n], -math.inf).flatten()
                            for n in names])
        n_keep = min(round(density * scores.numel()), int(sum(int(self.masks[n].sum()) for n in names)))
        keep = top_k_mask(scores, n_keep, self.generator).split([self.masks[n].numel() for n in names])
        for name, kept in zip(names, keep):
            self._replace_mask(name, kept.view_as(self.masks[name]))
        self.last_update = {"step": self.step_count, "drop_fraction": 0.0, "grown": 0}

    def grow_scores(self, name: str) -> torch.Tensor:
        """RigL (and RigL-SG/SM): |∂L/∂w| of the dense weight; SET: uniform noise; SNFS: |momentum|."""
        weight = self.weights[name]
        if self.config.method == "set":
            return torch.rand(weight.shape, generator=self.generator, device=weight.device)
        if self.config.method == "snfs":
            return self.momentum(name).abs()
        return self.gradient(name).abs()

    def gradient(self, name: str) -> torch.Tensor:
        weight = self.weights[name]
        return weight.grad if weight.grad is not None else torch.zeros_like(weight)

    def momentum(self, name: str) -> torch.Tensor:
        """The optimizer's first moment of a weight (SGD momentum buffer or Adam's exp_avg)."""
        weight = self.weights[name]
        state = self.optimizer.state.get(weight, {}) if self.optimizer is not None else {}
        for key in ("momentum_buffer", "exp_avg"):
            if state.get(key) is not None:
                return state[key]
        return self.gradient(name)

    def _replace_mask(self, name: str, new: torch.Tensor) -> int:
        """Install a new mask; returns how many connections are new.

        A connection active before and after (kept, or dropped and grown back) keeps its value and
        optimizer state, as in TF. Dropped ones become 0; new ones start at 0 (grow_init="zeros")
        with their optimizer state reset to 0. SNFS's momentum stays dense (Dettmers' code).
        """
        old, weight = self.masks[name], self.weights[name]
        survivors = new & old
        weight.mul_(survivors)
        if self.config.method != "snfs":
            for state in self._optimizer_state(weight):
                state.mul_(survivors)
        self.masks[name] = new
        return int((new & ~old).sum())

    def _optimizer_state(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """Per-weight optimizer tensors: SGD's momentum buffer, Adam's exp_avg and exp_avg_sq..."""
        if self.optimizer is None:
            return []
        state = self.optimizer.state.get(weight, {})
        return [t for t in state.values() if torch.is_tensor(t) and t.shape == weight.shape]

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Train with given masks from now on, e.g. a lottery ticket: a pruning run's final masks."""
        for name, mask in masks.items():
            if name not in self.weights or mask.shape != self.weights[name].shape:
                raise ValueError(f"mask {name} of shape {tuple(mask.shape)} fits no masked weight")
        device = next(iter(self.weights.values())).device
        self.masks = {name: mask.to(device=device, dtype=torch.bool) for name, mask in masks.items()}
        self.apply_masks()

    def _check_counts(self, before: dict[str, int]) -> None:
        after = {name: int(mask.sum()) for name, mask in self.masks.items()}
        if self.config.method in REDISTRIBUTING:
            assert sum(after.values()) == sum(before.values()), "redistribution keeps the global count"
        else:
            assert after == before, "an update must keep every layer's active count"

    # -- inspection and checkpoints -----------------------------------------------------------

    def layer_stats(self) -> list[dict]:
        """Per masked weight: name, shape, density, active and total weights."""
        rows = []
        for name, weight in self.weights.items():
            active = int(self.masks[name].sum()) if name in self.masks else weight.numel()
            rows.append({"name": name, "shape": tuple(weight.shape), "density": active / weight.numel(),
                         "active": active, "total": weight.numel()})
        return rows

    def __repr__(self) -> str:
        cfg, rows = self.config, self.layer_stats()
        active, total = sum(r["active"] for r in rows), sum(r["total"] for r in rows)
        width = max(len(r["name"]) for r in rows)
        lines = [f"Sparsity(method={cfg.method}, distribution={cfg.distribution}, "
                 f"density={active / total:.4f}, step={self.step_count}/{self.total_steps}, "
                 f"update_interval={cfg.update_interval}, t_end={self.t_end})"]
        for r in rows + [{"name": "total", "shape": "", "density": active / total,
                          "active": active, "total": total}]:
            lines.append(f"  {r['name']:<{width}}  {str(r['shape']):<16}  {r['density']:7.4f}  "
                         f"{r['active']:>11,} / {r['total']:,}")
        return "\n".join(lines)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "masks": {n: m.clone() for n, m in self.masks.items()},
                "generator": self.generator.get_state(), "last_update": dict(self.last_update)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["masks"]) != set(self.masks):
            raise ValueError(f"checkpoint masks {sorted(state['masks'])} do not match this model's "
                             f"sparse layers {sorted(self.masks)}")
        for name, mask in state["masks"].items():
            if mask.shape != self.masks[name].shape:
                raise ValueError(f"mask {name} has shape {tuple(mask.shape)}, "
                                 f"expected {tuple(self.masks[name].shape)}")
            self.masks[name] = mask.to(device=self.masks[name].device, dtype=torch.bool)
        self.step_count = state["step_count"]
        self.generator.set_state(state["generator"])
        self.last_update = dict(state["last_update"])
        self.apply_masks()


# =============================================================================================
# Training: the report's recipes, data, one visible loop, checkpoints
# Everything below imports torchvision, rich and typer inside the functions that need them.
# =============================================================================================

Dataset = Literal["cifar10", "cifar100", "imagenet", "synthetic"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
REPORT_STEPS = 87_891  # 250 epochs of 45,000 images at batch 128, the report's CIFAR run


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
        _check_choice("dataset", self.dataset, Dataset)
        _check_choice("precision", self.precision, Precision)
        for field, low in [("epochs", 1), ("batch_size", 1), ("val_size", 0), ("train_subset", 0),
                           ("workers", 0), ("accumulate", 1)]:
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
        for field in ("multiplier", "lr"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"{field} must be > 0, got {value!r}")
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
    values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    for field, default in RECIPES[cfg.dataset].items():
        if values[field] is None:
            values[field] = default
    if values["lr"] is None:
        values["lr"] = 0.1 * values["batch_size"] / 256
    return TrainConfig(**values)


class DataUnavailable(Exception):
    """The dataset is not on disk and cannot be downloaded."""


@dataclass
class Data:
    """Each split is (uint8 images N×3×H×W, labels) held in memory (CIFAR, synthetic) or a
    torchvision dataset of normalised tensors read by a DataLoader (ImageNet)."""

    train: object
    val: object | None
    test: object
    num_classes: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @property
    def num_train(self) -> int:
        return len(self.train[1]) if isinstance(self.train, tuple) else len(self.train)


def load_data(cfg: TrainConfig) -> Data:
    if cfg.dataset == "synthetic":
        images, labels, test = synthetic_images(cfg.train_subset or 5000, cfg.val_size, cfg.seed)
    elif cfg.dataset == "imagenet":
        return image_folder_data(cfg)
    else:
        images, labels, test = cifar_images(cfg.dataset, cfg.data_dir)
    val_idx, train_idx = split_indices(len(labels), cfg)
    train = (images[train_idx], labels[train_idx])
    val = (images[val_idx], labels[val_idx]) if cfg.val_size else None
    pixels = train[0].float()
    return Data(train, val, test, int(labels.max()) + 1,
                pixels.mean((0, 2, 3)).view(1, 3, 1, 1), pixels.std((0, 2, 3)).view(1, 3, 1, 1))


def split_indices(n: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split (seed 0), the same for every run: the first val_size of a permutation are
    held out, the first train_subset of the rest are trained on."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    val_idx, train_idx = order[:cfg.val_size], order[cfg.val_size:]
    if cfg.train_subset and cfg.dataset != "synthetic":
        train_idx = train_idx[:cfg.train_subset]
    return val_idx, train_idx


def image_folder_data(cfg: TrainConfig) -> Data:
    """ImageNet as an ImageFolder tree, DATA_DIR/train/<class>/* and DATA_DIR/val/<class>/*, with
    the standard random-resized-crop and flip for training, resize 256 and center crop 224 for eval."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    root = os.path.abspath(cfg.data_dir)
    if not all(os.path.isdir(os.path.join(root, split)) for split in ("train", "val")):
        raise DataUnavailable(
            f"ImageNet is read from an ImageFolder tree, {root}/train/<class>/*.JPEG and "
            f"{root}/val/<class>/*.JPEG, which is not there (torchvision cannot download it); "
            f"pass --data-dir with the folder that holds train/ and val/.")
    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    augment = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    center = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    train, held = ImageFolder(os.path.join(root, "train"), augment), ImageFolder(os.path.join(root, "train"), center)
    val_idx, train_idx = split_indices(len(train), cfg)
    val = torch.utils.data.Subset(held, val_idx.tolist()) if cfg.val_size else None
    return Data(torch.utils.data.Subset(train, train_idx.tolist()), val,
                ImageFolder(os.path.join(root, "val"), center), len(train.classes))


def cifar_images(name: str, root: str) -> tuple:
    """CIFAR-10/100 through torchvision, downloaded into `root` when the network allows."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    try:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as error:  # torchvision raises URLError, RuntimeError, OSError offline
        raise DataUnavailable(
            f"{name} is not in {root!r} and could not be downloaded ({error}). Put the python "
            f"version of the dataset in {os.path.join(root, folder)}, or pass --data-dir with the "
            f"folder that holds it, or run once with network access.") from None

    def tensors(ds):
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(ds.targets, dtype=torch.long))
    return (*tensors(train), tensors(test))


def synthetic_images(n_train: int, n_val: int, seed: int, classes: int = 10) -> tuple:
    """A learnable stand-in for CIFAR: each class is a smooth random template plus pixel noise."""
    g = torch.Generator().manual_seed(1234 + seed)
    templates = nn.functional.interpolate(torch.randn(classes, 3, 4, 4, generator=g), size=32,
                                          mode="bilinear", align_corners=False)

    def draw(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        x = templates[labels] + 1.5 * torch.randn(n, 3, 32, 32, generator=g)
        return (128 + 40 * x).clamp(0, 255).to(torch.uint8), labels
    images, labels = draw(n_train + n_val)
    return images, labels, draw(2000)


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation on a batch: reflect-pad 4, random 32×32 crop, horizontal flip."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), generator=generator, device=x.device)
    rows = top + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = left + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    crops = padded[batch, torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-100 augmentation (RR): RandomResizedCrop(32), scale (0.08, 1), ratio (3/4, 4/3), flip."""
    from torchvision.ops import roi_align
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(0.08, 1.0, generator=generator) * h * w
    log_ratio = torch.empty(n, device=x.device).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                         generator=generator)
    cw = (area * log_ratio.exp()).sqrt().clamp(max=w)
    ch = (area / log_ratio.exp()).sqrt().clamp(max=h)
    x0 = torch.rand(n, generator=generator, device=x.device) * (w - cw)
    y0 = torch.rand(n, generator=generator, device=x.device) * (h - ch)
    boxes = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], 1)
    crops = roi_align(x, boxes, output_size=(h, w), aligned=True)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)


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


@dataclass
class Run:
    """Everything a training run holds, so that a checkpoint can save and restore all of it."""

    cfg: TrainConfig
    sparse_cfg: SparsityConfig
    data: Data
    device: torch.device
    model: nn.Module
    net: nn.Module  # the model itself, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sparsity: Sparsity
    generator: torch.Generator
    steps_per_epoch: int
    epochs: int
    scaler: object = None
    dense_macs: dict | None = None
    f_dense: float = 0.0
    f_sparse: float = 0.0
    tally: object = None
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    history: list | None = None
    layer_history: list | None = None

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sparsity": self.sparsity.state_dict(),
                "data_rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": self.scaler.state_dict(), "flops": self.tally.state_dict(), "epoch": self.epoch, "step": self.step,
                "elapsed": self.elapsed, "history": self.history,
                "layer_history": self.layer_history}

    def load_state_dict(self, state: dict) -> None:
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
        self.f_sparse = current_forward_flops(self)
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.history, self.layer_history = state["history"], state["layer_history"]


def world() -> tuple[int, int]:
    """(rank, number of processes): under torchrun the process group's, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device_name: str) -> None:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) when WORLD_SIZE > 1."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        gpu = torch.cuda.is_available() and device_name != "cpu"
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if gpu else "gloo")
        if dist.get_rank() != 0:
            log.setLevel(logging.WARNING)  # rank 0 tells the story


def pick_device(name: str) -> torch.device:
    if name == "auto":
        cuda = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world()[1] > 1 else "cuda"
        return torch.device(cuda if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return device


def build_run(cfg: TrainConfig, sparse_cfg: SparsityConfig) -> Run:
    """Data, model, optimizer, learning-rate schedule and masks of a resolved configuration."""
    import flops
    from models import build_model
    device = pick_device(cfg.device)
    if (sparse_cfg.method == "lottery") != (cfg.mask_from is not None):
        raise ValueError("method lottery needs --mask-from RUN_DIR, and --mask-from needs method lottery")
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    width = small_dense_width(cfg.model, data.num_classes, sparse_cfg) \
        if sparse_cfg.method == "small-dense" else 1.0
    model = build_model(cfg.model, num_classes=data.num_classes, width_scale=width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(train_batch_count(data, cfg) / cfg.accumulate)
    epochs = round(cfg.epochs * cfg.multiplier)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, cfg.warmup, cfg.lr_milestones, cfg.lr_gamma))
    sparsity = Sparsity(model, optimizer, sparse_cfg, total_steps=total)
    if sparse_cfg.method == "lottery":
        init, masks = lottery_ticket(cfg)
        model.load_state_dict(init)
        sparsity.set_masks(masks)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    if data.mean is not None:  # the fast path: the dataset lives on the device, augmented there
        data.train, data.test = [(x.to(device), y.to(device)) for x, y in (data.train, data.test)]
        data.val = (data.val[0].to(device), data.val[1].to(device)) if data.val else None
        data.mean, data.std = data.mean.to(device), data.std.to(device)
    net = model
    if world()[1] > 1:  # gradients are all-reduced in backward, so every rank ranks the same ones
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    run = Run(cfg, sparse_cfg, data, device, model, net, optimizer, scheduler, sparsity, generator,
              steps_per_epoch, epochs, history=[], layer_history=[], tally=flops.FlopTally(),
              scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
              dense_macs=flops.dense_layer_macs(model, 224 if cfg.dataset == "imagenet" else 32))
    run.f_dense = flops.PAPER_FLOPS_PER_MAC * sum(run.dense_macs.values())
    run.f_sparse = current_forward_flops(run)
    run.layer_history.append(layer_densities_now(run))
    return run


def layer_densities_now(run: Run) -> dict:
    """One line of densities.jsonl: every masked layer's density after `run.epoch` epochs."""
    return {"epoch": run.epoch, "densities": {r["name"]: r["density"] for r in run.sparsity.layer_stats()}}


def small_dense_width(model_name: str, num_classes: int, sparse_cfg: SparsityConfig) -> float:
    """Small-Dense: the channel scale at which the dense model has as many conv and linear weights
    as the sparse model has active ones (RR scales by √d; we solve for the count, by bisection)."""
    from models import build_model

    def weights(scale: float) -> int:
        with torch.device("meta"):
            return sum(w.numel() for w in masked_weights(build_model(model_name, num_classes,
                                                                     width_scale=scale)).values())
    with torch.device("meta"):
        full = build_model(model_name, num_classes)
    sparse = model_densities(full, replace(sparse_cfg, method="static"))
    target = sum(active_count(d, w.numel()) for d, w in zip(sparse.values(), masked_weights(full).values()))
    low, high = 0.01, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if weights(middle) < target else (low, middle)
    return min((low, high), key=lambda s: abs(weights(s) - target))


def lottery_ticket(cfg: TrainConfig) -> tuple[dict, dict]:
    """The initial weights (init.pt) and final masks (checkpoint.pt) of the run in --mask-from."""
    from pathlib import Path
    source = Path(cfg.mask_from)
    if not (source / "init.pt").exists() or not (source / "checkpoint.pt").exists():
        raise UsageError(f"--mask-from {source}: expected a finished run's init.pt and checkpoint.pt there")
    config = json.loads((source / "config.json").read_text())["train"]
    if (config["model"], config["dataset"]) != (cfg.model, cfg.dataset):
        raise UsageError(f"--mask-from {source} trained {config['model']} on {config['dataset']}, "
                         f"not {cfg.model} on {cfg.dataset}")
    masks = torch.load(source / "checkpoint.pt", weights_only=True)["sparsity"]["masks"]
    return torch.load(source / "init.pt", weights_only=True), masks


def current_forward_flops(run: Run) -> float:
    """f_S of the current masks, per sample, in the paper's convention (flops.py)."""
    import flops
    densities = {r["name"]: r["density"] for r in run.sparsity.layer_stats()}
    return flops.PAPER_FLOPS_PER_MAC * flops.sparse_forward_macs(run.dense_macs, densities)


def prepare(run: Run, images: torch.Tensor, train: bool) -> torch.Tensor:
    """uint8 images to normalised floats on the device, augmented for training."""
    x = images.float()
    if train:
        augment = random_resized_crop_flip if run.cfg.dataset == "cifar100" else pad_crop_flip
        x = augment(x, run.generator)
    x = (x - run.data.mean) / run.data.std
    return x.contiguous(memory_format=torch.channels_last) if run.device.type == "cuda" else x


def autocast(run: Run):
    """Mixed precision of the forward pass (--precision); fp32 disables it."""
    dtype = AUTOCAST[run.cfg.precision]
    return torch.autocast(run.device.type, dtype or torch.bfloat16, enabled=dtype is not None)


def train_batch_count(data: Data, cfg: TrainConfig) -> int:
    """Minibatches per epoch. Under torchrun each global batch of --batch-size is split across the
    ranks; a last in-memory batch with fewer images than ranks is left out."""
    rank, size = world()
    if isinstance(data.train, tuple):
        return data.num_train // cfg.batch_size + (data.num_train % cfg.batch_size >= size)
    return math.ceil(math.ceil(data.num_train / size) / (cfg.batch_size // size))


def batches(run: Run, split, train: bool, batch_size: int):
    """(x, y, images in the global batch) on the device: shuffled and augmented for training.
    Training batches are this rank's share of the global batch; evaluation sees the whole split."""
    rank, size = world() if train else (0, 1)
    if isinstance(split, tuple):
        images, labels = split
        n = len(labels)
        order = (torch.randperm(n, generator=run.generator, device=run.device) if train
                 else torch.arange(n, device=run.device))
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            if len(index) < size:
                return
            count, index = len(index), index[rank::size]
            yield prepare(run, images[index], train), labels[index], count
        return
    # A folder dataset: DataLoader workers decode and augment; the order is seeded per epoch.
    order = torch.Generator().manual_seed(run.cfg.seed * 100_003 + run.epoch)
    sampler = None
    if size > 1:
        sampler = torch.utils.data.DistributedSampler(split, size, rank, shuffle=True, seed=run.cfg.seed)
        sampler.set_epoch(run.epoch)
    loader = torch.utils.data.DataLoader(split, batch_size // size, shuffle=train and sampler is None,
                                         sampler=sampler, generator=order, num_workers=run.cfg.workers,
                                         pin_memory=run.device.type == "cuda")
    memory_format = torch.channels_last if run.device.type == "cuda" else torch.preserve_format
    for x, y in loader:
        yield x.to(run.device, non_blocking=True, memory_format=memory_format), y.to(run.device), len(y) * size


@torch.no_grad()
def evaluate(run: Run, split) -> float | None:
    """Top-1 accuracy (%) on a split; None when there is no such split. Batches of the training
    batch size: on a CPU, batches of 1,000 images ran 2.5x slower than batches of 100."""
    if split is None:
        return None
    run.model.eval()
    correct = total = 0
    for x, y, _ in batches(run, split, train=False, batch_size=run.cfg.batch_size):
        with autocast(run):
            correct += int((run.model(x).argmax(1) == y).sum())
        total += len(y)
    run.model.train()
    return 100.0 * correct / total


def train(run: Run, out, console) -> dict:
    """The training loop: forward, backward, mask update on update steps, optimizer step, masks
    re-applied; then evaluation, the epoch's metrics line and a checkpoint."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    model, optimizer, sparsity, cfg = run.model, run.optimizer, run.sparsity, run.cfg
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    while run.epoch < run.epochs:
        started, regrown, loss_sum = time.perf_counter(), 0, torch.zeros((), device=run.device)
        micro_batches, samples, step_in_epoch = train_batch_count(run.data, cfg), 0, 0
        with Progress(TextColumn(f"epoch {run.epoch + 1}/{run.epochs}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} steps  {task.fields[status]}"),
                      TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task("train", total=run.steps_per_epoch, status="")
            for i, (x, y, count) in enumerate(batches(run, run.data.train, True, cfg.batch_size)):
                with autocast(run):
                    loss = criterion(run.net(x), y) / cfg.accumulate
                run.scaler.scale(loss).backward()   # fp16 scales the loss; otherwise a no-op
                loss_sum, samples = loss_sum + loss.detach(), samples + count
                if (i + 1) % cfg.accumulate and i + 1 < micro_batches:
                    continue                        # --accumulate: gradients add up over micro-batches
                run.scaler.unscale_(optimizer)      # the mask update reads the true gradients
                updated = sparsity.step()
                if updated:                   # a mask update replaces this optimizer step
                    regrown += sparsity.last_update["grown"]
                else:
                    run.scaler.step(optimizer)  # skipped by fp16 when the gradients overflowed
                run.scaler.update()
                sparsity.apply_masks()
                # FLOPs of this step (paper's accounting): RigL's update step pays a dense gradient
                run.tally.add(run.sparse_cfg.method, run.f_sparse, run.f_dense, updated, samples)
                if sparsity.masks_changed:  # SNFS, RigL-SG/SM and pruning change layer densities
                    run.f_sparse = current_forward_flops(run)
                optimizer.zero_grad(set_to_none=True)
                run.scheduler.step()
                run.step, step_in_epoch, samples = run.step + 1, step_in_epoch + 1, 0
                if step_in_epoch % 20 == 1 or step_in_epoch == run.steps_per_epoch:
                    rate = (i + 1) * cfg.batch_size / (time.perf_counter() - started)
                    progress.update(task, completed=step_in_epoch,
                                    status=f"loss {loss.item() * cfg.accumulate:.3f}  {rate:,.0f} img/s")
        run.elapsed += time.perf_counter() - started
        run.epoch += 1
        record = epoch_record(run, float(loss_sum) / run.steps_per_epoch, regrown)
        run.history.append(record)
        run.layer_history.append(layer_densities_now(run))
        console.print(format_record(record), soft_wrap=True, highlight=False)
        save_run_files(run, out)
    return write_summary(run, out)


METRIC_KEYS = ("epoch", "step", "lr", "train_loss", "val_acc", "test_acc", "drop_fraction",
               "regrown", "elapsed")


def epoch_record(run: Run, train_loss: float, regrown: int) -> dict:
    """One line of metrics.jsonl: the same keys every epoch (README, "Metrics")."""
    dynamic = run.sparse_cfg.method in DROP_AND_GROW
    alpha = cosine_drop_fraction(run.step, run.sparse_cfg.drop_fraction, run.sparsity.t_end)
    return {"epoch": run.epoch, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss, "val_acc": evaluate(run, run.data.val),
            "test_acc": evaluate(run, run.data.test), "drop_fraction": alpha if dynamic else 0.0,
            "regrown": regrown, "elapsed": round(run.elapsed, 3)}


def format_record(r: dict) -> str:
    val = "  n/a" if r["val_acc"] is None else f"{r['val_acc']:5.2f}"
    return (f"epoch {r['epoch']:>4}  step {r['step']:>7}  lr {r['lr']:.5f}  train loss "
            f"{r['train_loss']:.4f}  val acc {val}  test acc {r['test_acc']:5.2f}  drop fraction "
            f"{r['drop_fraction']:.4f}  regrown {r['regrown']:>7}  elapsed {r['elapsed']:8.1f}s")


def atomic_write(path, write) -> None:
    """Write through a temporary file and rename it, so a kill never leaves a broken file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_run_files(run: Run, out) -> None:
    """checkpoint.pt, metrics.jsonl and densities.jsonl, replaced atomically after every epoch;
    under torchrun by rank 0 only, once every rank has checked that they agree."""
    check_ranks_agree(run)
    if world()[0] != 0:
        return
    atomic_write(out / "checkpoint.pt", lambda p: torch.save(run.state_dict(), p))
    for name, records in (("metrics.jsonl", run.history), ("densities.jsonl", run.layer_history)):
        lines = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(out / name, lambda p: p.write_text(lines))


def flop_summary(run: Run) -> dict:
    """Training FLOPs actually spent and inference FLOPs of the final masks, paper convention.

    A training ratio is relative to the dense model trained on the 1× schedule (flops.py)."""
    import flops
    dense_1x = 3 * run.f_dense * run.data.num_train * run.epoch / run.cfg.multiplier
    return {"train_flops": run.tally.total, "train_flops_ratio": run.tally.total / dense_1x,
            "inference_flops": run.f_sparse, "inference_flops_ratio": run.f_sparse / run.f_dense,
            "flops_convention": flops.CONVENTION}


def write_summary(run: Run, out) -> dict:
    vals = [r["val_acc"] for r in run.history if r["val_acc"] is not None]
    summary = {"final_val_acc": run.history[-1]["val_acc"], "final_test_acc": run.history[-1]["test_acc"],
               "best_val_acc": max(vals) if vals else None, "epochs": run.epoch, "steps": run.step,
               "wall_time": round(run.elapsed, 3), "density": sum(r["active"] for r in run.sparsity.layer_stats())
               / sum(r["total"] for r in run.sparsity.layer_stats()),
               "layers": run.sparsity.layer_stats(), **flop_summary(run)}
    if world()[0] == 0:
        atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def check_ranks_agree(run: Run) -> None:
    """Under torchrun, every rank must hold the same masks and weights (they rank the same
    all-reduced gradients with the same generator): compare fingerprints, stop if they differ."""
    import hashlib
    import torch.distributed as dist
    rank, size = world()
    if size == 1:
        return
    digest = hashlib.sha256()
    for name, weight in run.sparsity.weights.items():
        mask = run.sparsity.masks.get(name)
        for tensor in (weight.detach(), mask) if mask is not None else (weight.detach(),):
            digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    fingerprints = [None] * size
    dist.all_gather_object(fingerprints, digest.hexdigest())
    if len(set(fingerprints)) != 1:
        raise RuntimeError(f"ranks disagree on masks or weights after epoch {run.epoch}: {fingerprints}")
    if rank == 0:
        log.info("epoch %d: masks and weights identical on all %d ranks", run.epoch, size)


# ---------------------------------------------------------------------------------------------
# Run directories: config.json, metrics.jsonl, summary.json, checkpoint.pt
# ---------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A problem the user can fix from the command line; printed without a traceback."""


def git_commit() -> str | None:
    import subprocess
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def run_config(cfg: TrainConfig, sparse_cfg: SparsityConfig) -> dict:
    """The resolved configuration, as saved in config.json (tuples become lists, as in JSON)."""
    return json.loads(json.dumps({"train": asdict(cfg), "sparsity": asdict(sparse_cfg),
                                  "torch": torch.__version__, "git_commit": git_commit()}))


def config_differences(saved: dict, now: dict) -> list[str]:
    """Fields that differ between a saved run and the one asked for (the device may change)."""
    return [f"{key} (run has {saved[section].get(key)!r}, asked for {value!r})"
            for section in ("train", "sparsity") for key, value in now[section].items()
            if key != "device" and saved[section].get(key) != value]


def start_run(cfg: TrainConfig, sparse_cfg: SparsityConfig, out, resume: bool, console) -> dict:
    """Resolve the recipe, create or resume the run directory `out`, and train (under torchrun,
    every process runs this; rank 0 prints and writes)."""
    import io
    from pathlib import Path
    from rich.console import Console
    out = Path(out)
    cfg = resolve_recipe(cfg)
    sparse_cfg = replace(sparse_cfg, seed=cfg.seed)
    config, checkpoint = run_config(cfg, sparse_cfg), out / "checkpoint.pt"
    if resume:
        if not checkpoint.exists():
            raise UsageError(f"--resume: there is no checkpoint.pt in {out} to resume")
        differences = config_differences(json.loads((out / "config.json").read_text()), config)
        if differences:
            raise UsageError(f"refusing to resume {out} with a different configuration: "
                             + "; ".join(differences))
    elif checkpoint.exists():
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, "
                         f"or choose another --out")
    init_distributed(cfg.device)
    run = build_run(cfg, sparse_cfg)
    if world()[0] != 0:
        console = Console(file=io.StringIO())  # one rank speaks and writes
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        run.load_state_dict(torch.load(checkpoint, map_location=run.device, weights_only=True))
        console.print(f"resumed {out} at epoch {run.epoch}, step {run.step}")
    elif world()[0] == 0:
        atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
        atomic_write(out / "init.pt", lambda p: torch.save(run.model.state_dict(), p))  # for lottery
    print_start(run, config, console)
    summary = train(run, out, console)
    console.print(f"done: test acc {summary['final_test_acc']:.2f}%, best val acc "
                  f"{summary['best_val_acc']}, {summary['steps']} steps, {summary['wall_time']:.0f}s; "
                  f"training FLOPs {summary['train_flops']:.3e} ({summary['train_flops_ratio']:.3f}× dense 1×), "
                  f"inference FLOPs {summary['inference_flops']:.3e} ({summary['inference_flops_ratio']:.3f}× "
                  f"dense), paper convention; results in {out}", soft_wrap=True, highlight=False)
    return summary


def print_start(run: Run, config: dict, console) -> None:
    """The resolved configuration and the per-layer density table, once at the start."""
    import flops
    from rich.table import Table
    console.print(f"[bold]config[/] {json.dumps(config['train'])}")
    console.print(f"[bold]sparsity[/] {json.dumps(config['sparsity'])}")
    console.print(f"device {run.device}, {run.data.num_train:,} training images, "
                  f"{run.steps_per_epoch} steps/epoch × {run.epochs} epochs, T_end step {run.sparsity.t_end}")
    table = Table("layer", "shape", "density", "active", "weights", "dense FLOPs", "sparse FLOPs",
                  title="masked layers (FLOPs per sample, multiplies and adds counted separately)")
    rows = run.sparsity.layer_stats()
    for r in rows:
        dense = flops.PAPER_FLOPS_PER_MAC * run.dense_macs[r["name"]]
        table.add_row(r["name"], str(tuple(r["shape"])), f"{r['density']:.4f}", f"{r['active']:,}",
                      f"{r['total']:,}", f"{dense:.3e}", f"{dense * r['density']:.3e}")
    active, total = sum(r["active"] for r in rows), sum(r["total"] for r in rows)
    table.add_row("total", "", f"{active / total:.4f}", f"{active:,}", f"{total:,}",
                  f"{run.f_dense:.3e}", f"{run.f_sparse:.3e}")
    console.print(table)


# ---------------------------------------------------------------------------------------------
# Command line: options generated from the two configuration dataclasses
# ---------------------------------------------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field, which is also its --help text."""
    import ast
    import inspect
    import textwrap
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: " ".join(doc.value.value.split()) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)}


def cli_parameters(cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> list:
    """One typer option per field, with the field's default and docstring; tuples are typed as
    comma-separated strings."""
    import dataclasses
    import inspect
    import typing
    import typer
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        hint = hints[f.name]
        if "tuple" in str(hint):
            hint = typing.Optional[str]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=typing.Annotated[hint, typer.Option(help=docs[f.name])]))
    return params


def from_cli(cls, options: dict):
    """Build a configuration from the options that belong to it; comma lists become tuples."""
    import dataclasses
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in options:
            value = options[f.name]
            if "tuple" in str(f.type) and isinstance(value, str):
                parts = [p.strip() for p in value.split(",") if p.strip()]
                value = tuple(float(p) for p in parts) if "float" in str(f.type) else tuple(parts)
            values[f.name] = value
    return cls(**values)


def make_console():
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=200)  # pipes get whole lines


@contextlib.contextmanager
def user_errors(console, interrupted: str = "interrupted"):
    """A problem the user can fix ends the command with one line and exit code 2, not a traceback."""
    try:
        yield
    except (ValueError, UsageError, DataUnavailable) as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        console.print(interrupted)
        raise SystemExit(130)
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def train_command(**options) -> None:
    """Train a model with sparse training (defaults: the report's CIFAR-10 WRN-22-2 RigL run)."""
    console = make_console()
    with user_errors(console, "interrupted: the last finished epoch is saved; continue with --resume"):
        cfg = resolve_recipe(from_cli(TrainConfig, options))
        sparse_cfg = from_cli(SparsityConfig, options)
        out = options["out"] or (f"runs/{cfg.dataset}-{cfg.model}-{sparse_cfg.method}-"
                                 f"{sparse_cfg.distribution}-d{sparse_cfg.density}-s{cfg.seed}")
        start_run(cfg, sparse_cfg, out, options["resume"], console)


SWEEP_AXES = {"methods": ("method", str), "densities": ("density", float),
              "distributions": ("distribution", str), "seeds": ("seed", int),
              "multipliers": ("multiplier", float), "drop_fractions": ("drop_fraction", float),
              "update_intervals": ("update_interval", int)}
"""The sweep's grid: option name -> (configuration field, type of its comma-separated values)."""


def sweep_cells(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, one run each. Dense and small-dense ignore the
    distribution (dense the density too), so their duplicates are dropped; lottery cells follow
    the pruning cell whose masks they retrain."""
    import itertools
    fields = [SWEEP_AXES[axis][0] for axis in grid]
    cells, seen = [], set()
    for values in itertools.product(*grid.values()):
        cell = dict(zip(fields, values))
        if cell["method"] in ("dense", "small-dense"):
            cell["distribution"] = "erk"
        if cell["method"] == "dense":
            cell["density"] = 1.0
        key = tuple(sorted(cell.items()))
        if key not in seen:
            seen.add(key)
            cells.append(cell)
    order = {"pruning": 0, "lottery": 2}
    return sorted(cells, key=lambda c: order.get(c["method"], 1))


def cell_name(cell: dict, varied: set[str]) -> str:
    """A readable run directory name, e.g. rigl-erk-d0.1-x1.0-s0 (α and ΔT when the sweep varies them)."""
    name = cell["method"] if cell["method"] == "dense" else \
        f"{cell['method']}-{cell['distribution']}-d{cell['density']}"
    name += f"-x{cell['multiplier']}"
    if "drop_fraction" in varied:
        name += f"-a{cell['drop_fraction']}"
    if "update_interval" in varied:
        name += f"-dt{cell['update_interval']}"
    return name + f"-s{cell['seed']}"


def sweep_command(**options) -> None:
    """Run a grid of training runs one after another into ROOT, one run directory per cell;
    finished cells are skipped and an interrupted one resumes, so a killed sweep restarts where it
    stopped. Options not in the grid apply to every run."""
    from pathlib import Path
    console, root = make_console(), Path(options["root"])
    with user_errors(console, "interrupted: rerun the same sweep command to continue where it stopped"):
        grid = {axis: [kind(v) for v in str(options[axis]).split(",") if v.strip()]
                for axis, (_, kind) in SWEEP_AXES.items()}
        cells = sweep_cells(grid)
        varied = {SWEEP_AXES[a][0] for a, values in grid.items() if len(values) > 1}
        varied |= {f for f, default in (("drop_fraction", 0.3), ("update_interval", 100))
                   if any(c[f] != default for c in cells)}
        names = [cell_name(cell, varied) for cell in cells]
        for cell in cells:  # check every cell before the first one trains
            from_cli(SparsityConfig, {**options, **cell})
            if cell["method"] == "lottery" and "pruning" not in grid["methods"]:
                raise ValueError("lottery cells retrain the masks of pruning cells: add pruning to --methods")
        for i, (cell, name) in enumerate(zip(cells, names), 1):
            out = root / name
            state = "done" if (out / "summary.json").exists() else \
                "resume" if (out / "checkpoint.pt").exists() else "new"
            console.print(f"[{i}/{len(cells)}] {name}: {state}", highlight=False)
            if options["dry_run"] or state == "done":
                continue
            cfg = from_cli(TrainConfig, {**options, "seed": cell["seed"], "multiplier": cell["multiplier"]})
            if cell["method"] == "lottery":
                ticket = {**cell, "method": "pruning"}
                cfg = replace(cfg, mask_from=str(root / cell_name(ticket, varied)))
            sparse_cfg = from_cli(SparsityConfig, {**options, **cell})
            start_run(cfg, sparse_cfg, out, state == "resume", console)


def report_command(root: str) -> None:
    """Table 2 (mean ± std over seeds, with FLOPs) and figures from every finished run under ROOT:
    printed, and saved as ROOT/report.md, ROOT/report.csv and ROOT/figures/*.png."""
    import report
    console = make_console()
    with user_errors(console):
        report.make_report(root, console)


# ---------------------------------------------------------------------------------------------
# Benchmark: what the masks cost in wall-clock time, side by side with dense training
# ---------------------------------------------------------------------------------------------

BENCH_MODELS = {"wrn-22-2": (10, 32, 128), "resnet50": (1000, 224, 32)}
"""Model -> (classes, input size, default batch): CIFAR shapes for WRN-22-2, ImageNet for ResNet-50."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(name: str, method: str, batch: int, density: float, update_interval: int,
                 device: torch.device) -> dict:
    """Mean training step time over a full ΔT window (its one mask update included), the time of
    one mask update alone, and peak CUDA memory, for one model under one method."""
    from models import build_model
    classes, size, _ = BENCH_MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method=method, density=density,
                                                         update_interval=update_interval, t_end=1.0),
                        total_steps=100 * update_interval)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def train_step():
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not sparsity.step():
            optimizer.step()
        sparsity.apply_masks()
    for _ in range(2):  # warm-up: allocator, kernels, momentum buffers
        train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(update_interval):  # steps 3 .. ΔT + 2 hold the update at t = ΔT
        train_step()
    synchronize(device)
    step = (time.perf_counter() - started) / update_interval
    update = None
    if method in DROP_AND_GROW:
        started = time.perf_counter()
        sparsity.update_masks(0.3)
        synchronize(device)
        update = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"model": name, "method": method, "batch": batch, "step_s": step, "update_s": update,
            "peak_memory_bytes": memory}


BENCH_OPTIONS = [("models", str, "wrn-22-2,resnet50", "Comma-separated: wrn-22-2 (CIFAR shapes), resnet50 (ImageNet shapes)."),
                 ("methods", str, "static,set,rigl,snfs", "Comma-separated sparse methods, each timed beside dense."),
                 ("density", float, 0.1, "Overall density d of the sparse methods (ERK)."),
                 ("update_interval", int, 100, "ΔT: steps per timed window, one of them a mask update."),
                 ("batch_size", int, 0, "Batch; 0 = 128 for wrn-22-2, 32 for resnet50."),
                 ("repeats", int, 3, "Rounds of dense and every method in turn; the median is kept."),
                 ("device", str, "auto", "auto (CUDA when available) | cpu | cuda | cuda:N."),
                 ("json_output", bool, False, "Print one JSON object instead of the table.")]
"""The bench command's options: name, type, default, help."""


def bench_model(name: str, methods: list[str], batch: int, density: float, update_interval: int,
                repeats: int, device: torch.device) -> list[dict]:
    """Dense and every method timed in turn, `repeats` rounds, so that drifts of a shared machine
    hit all of them alike; the median of each is reported, with ratios to dense."""
    import statistics
    runs = {m: [] for m in ["dense"] + methods}
    for _ in range(repeats):
        for method in runs:
            runs[method].append(bench_method(name, method, batch, density, update_interval, device))
    rows, dense_step = [], statistics.median(r["step_s"] for r in runs["dense"])
    for method, results in runs.items():
        update = [r["update_s"] for r in results if r["update_s"] is not None]
        row = {**results[0], "step_s": statistics.median(r["step_s"] for r in results),
               "update_s": statistics.median(update) if update else None,
               "peak_memory_bytes": max((r["peak_memory_bytes"] or 0) for r in results) or None}
        rows.append({**row, "step_ratio": row["step_s"] / dense_step,
                     "update_vs_step": row["update_s"] / dense_step if update else None})
    return rows


def bench_command(models: str = "wrn-22-2,resnet50", methods: str = "static,set,rigl,snfs",
                  density: float = 0.1, update_interval: int = 100, batch_size: int = 0,
                  repeats: int = 3, device: str = "auto", json_output: bool = False) -> None:
    """Training step time of dense and of each sparse method, averaged over a ΔT window, one mask
    update alone, and peak memory, side by side in this process; ratios to dense."""
    from rich.table import Table
    console = make_console()
    with user_errors(console):
        rows = []
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            if name not in BENCH_MODELS:
                raise ValueError(f"bench models are {', '.join(BENCH_MODELS)}, got {name!r}")
            chosen = [m.strip() for m in methods.split(",") if m.strip()]
            for method in chosen:
                SparsityConfig(method=method)  # a clear error for an unknown method
            rows += bench_model(name, chosen, batch_size or BENCH_MODELS[name][2], density,
                                update_interval, repeats, pick_device(device))
        if json_output:
            print(json.dumps({"device": str(pick_device(device)), "update_interval": update_interval,
                              "density": density, "repeats": repeats, "rows": rows}))
            return
        table = Table("model", "method", "batch", "step (ms)", "step ×dense", "one update (ms)",
                      "update / dense step", "peak memory (MiB)",
                      title=f"{pick_device(device)}: steps averaged over ΔT = {update_interval} (one update "
                            f"each), median of {repeats} rounds")
        for r in rows:
            table.add_row(r["model"], r["method"], str(r["batch"]), f"{1000 * r['step_s']:.1f}",
                          f"{r['step_ratio']:.3f}", "-" if r["update_s"] is None else f"{1000 * r['update_s']:.1f}",
                          "-" if r["update_vs_step"] is None else f"{r['update_vs_step']:.2f}",
                          "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:,.0f}")
        console.print(table)


DATASET_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224),
                  "synthetic": (10, 32)}
"""Number of classes and input size of each dataset (FLOPs are counted at that size)."""


def flops_command(**options) -> None:
    """FLOPs of a model at a density: per layer, inference, training per step, and Table 2's
    columns for every method (paper convention: multiplies and adds counted separately)."""
    import flops
    from models import build_model
    console = make_console()
    with user_errors(console):
        cfg = resolve_recipe(from_cli(TrainConfig, options))
        sparse_cfg = from_cli(SparsityConfig, options)
    classes, size = DATASET_SHAPES[cfg.dataset]
    net = build_model(cfg.model, num_classes=classes)
    # Small-Dense: every channel count scaled by sqrt(d) (RR).
    small = build_model(cfg.model, classes, width_scale=math.sqrt(sparse_cfg.density))
    # The distribution's allocation; for pruning it stands for the final masks (an estimate: the
    # report's pruning ranks globally, so only a run knows its final layer densities).
    allocation = model_densities(net, replace(sparse_cfg, method="static"))
    report = flops.flop_report(net, size, allocation, options["method"],
                               sparse_cfg.update_interval, cfg.multiplier, small_dense_model=small)
    report["methods"] = flops.method_table(net, size, sparse_cfg.density, sparse_cfg.update_interval,
                                           cfg.multiplier, small_dense_model=small)
    if options["json"]:
        print(json.dumps(report))
    else:
        print_flop_report(report, cfg, sparse_cfg, options["method"], console)


def print_flop_report(report: dict, cfg: TrainConfig, sparse_cfg: SparsityConfig, method: str,
                      console) -> None:
    from rich.table import Table
    title = (f"{cfg.model} at {DATASET_SHAPES[cfg.dataset][1]}×{DATASET_SHAPES[cfg.dataset][1]}, "
             f"{method}, {sparse_cfg.distribution}, d = {sparse_cfg.density}")
    layers = Table("layer", "shape", "density", "params", "dense FLOPs", "sparse FLOPs", title=title)
    for r in report["layers"]:
        layers.add_row(r["name"], str(tuple(r["shape"])), f"{r['density']:.4f}", f"{r['params']:,}",
                       f"{r['dense_flops']:.4e}", f"{r['sparse_flops']:.4e}")
    console.print(layers)
    console.print(f"inference FLOPs {report['sparse_forward_flops']:.4e} per sample, "
                  f"{report['inference_flops_ratio']:.3f}× dense ({report['dense_forward_flops']:.4e})")
    console.print(f"training FLOPs {report['train_step_flops']:.4e} per step per sample, "
                  f"{report['train_flops_ratio']:.3f}× dense (×{cfg.multiplier} schedule, ΔT = "
                  f"{sparse_cfg.update_interval})")
    methods = Table("method", "distribution", "train ×dense", "test ×dense",
                    title=f"Table 2 columns at d = {sparse_cfg.density}, ×{cfg.multiplier} "
                          f"(SNFS and pruning from the initial allocation)")
    for r in report["methods"]:
        methods.add_row(r["method"], r["distribution"], f"{r['train_flops_ratio']:.2f}",
                        f"{r['inference_flops_ratio']:.2f}")
    console.print(methods)
    console.print(f"convention: {report['convention']}", highlight=False)


def main() -> None:
    import inspect
    import typing
    import typer
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="RigL and its baselines: `python rigl.py train --density 0.1`.")
    extra = [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typing.Annotated[
                 typing.Optional[str], typer.Option(help="Run directory. Default: runs/<dataset>-<model>-"
                                                         "<method>-<distribution>-d<density>-s<seed>.")]),
             inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=typing.Annotated[
                 bool, typer.Option(help="Continue the run in --out from its checkpoint.")])]
    train_command.__signature__ = inspect.Signature(
        cli_parameters(TrainConfig) + cli_parameters(SparsityConfig, skip=("seed",)) + extra)
    app.command("train")(train_command)
    import flops
    flops_command.__signature__ = inspect.Signature(
        cli_parameters(TrainConfig, only=("model", "dataset", "multiplier"))
        + cli_parameters(SparsityConfig, only=("density", "distribution", "update_interval"))
        + [inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, default="rigl", annotation=typing.Annotated[
               flops.Method, typer.Option(help="Method whose training FLOPs are counted.")]),
           inspect.Parameter("json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=typing.Annotated[
               bool, typer.Option("--json", help="Print one JSON object instead of tables.")])])
    app.command("flops")(flops_command)
    P = inspect.Parameter
    grid = [P(axis, P.KEYWORD_ONLY, default=default, annotation=typing.Annotated[str, typer.Option(
                help=f"Comma-separated values of --{field.replace('_', '-')} to sweep over.")])
            for (axis, (field, _)), default in zip(SWEEP_AXES.items(),
                                                    ("rigl", "0.1", "erk", "0", "1.0", "0.3", "100"))]
    sweep_command.__signature__ = inspect.Signature(
        [P("root", P.POSITIONAL_OR_KEYWORD, annotation=typing.Annotated[str, typer.Argument(
            help="Directory that receives one run directory per cell.")])]
        + grid + cli_parameters(TrainConfig, skip=("seed", "multiplier", "mask_from"))
        + cli_parameters(SparsityConfig, skip=("seed", "method", "density", "distribution",
                                               "drop_fraction", "update_interval"))
        + [P("dry_run", P.KEYWORD_ONLY, default=False, annotation=typing.Annotated[
            bool, typer.Option("--dry-run", help="List the cells and their state; train nothing.")])])
    app.command("sweep")(sweep_command)
    app.command("report")(report_command)
    bench_command.__signature__ = inspect.Signature(
        [P(name, P.KEYWORD_ONLY, default=default, annotation=typing.Annotated[kind, typer.Option(
            *(["--json"] if name == "json_output" else []), help=text)])
         for name, kind, default, text in BENCH_OPTIONS])
    app.command("bench")(bench_command)
    app()


if __name__ == "__main__":
    main()
