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
    if not sparsity.replaces_optimizer_step():   # True on update steps: drop and grow instead
        optimizer.step()
    sparsity.apply_masks()

or, for a trainer that calls `optimizer.step()` itself, `optimizer = sparsity.wrap(optimizer)`.

Symbols of the paper and their names here:

    d        density            fraction of a layer's weights that are active (1 - sparsity)
    α        drop_fraction      fraction of active weights replaced at an update
    ΔT       update_interval    training steps between mask updates
    T_end    t_end              fraction of training after which the masks are frozen
    f_decay  cosine_drop_fraction   α_t = α/2 · (1 + cos(π t / T_end))
    ε        eps                the ER/ERK normaliser that meets the density budget

Part I is the paper, in its order: configuration, layer densities (uniform, ER, ERK), masks,
schedules, drop and grow, and the `Sparsity` holder. Part II is what goes beyond it, each under
its own banner: configuration checks, which weights carry masks on any model, inspection
(exploration, print), resume in any order, RigL-struct, and the wrapped optimizer for trainers.
The file imports only torch and the standard library, so it can be copied on its own. The training
loop and recipes are in train.py; the command line, data, run directories, sweeps and reports in
the rigl_harness package (README, "Reading the code").
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import math
import sys
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

log = logging.getLogger("rigl")


# =============================================================================================
# Part I. The paper: configuration, layer densities, masks, schedules, drop and grow, the holder
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# Methods and configuration
# ---------------------------------------------------------------------------------------------

Method = Literal["dense", "small-dense", "static", "set", "rigl", "snfs", "pruning", "lottery",
                 "rigl-sg", "rigl-sm", "rigl-struct"]
"""Every method, in the order of the report's Table 2 and its "going beyond" variants."""
UNMASKED = ("dense", "small-dense")
"""Methods that train without masks: the dense network, and Small-Dense's narrower one."""
DROP_AND_GROW = ("rigl", "set", "snfs", "rigl-sg", "rigl-sm", "rigl-struct")
"""Methods that drop and regrow connections every ΔT steps until T_end."""
REDISTRIBUTING = {"snfs": "momentum", "rigl-sm": "momentum", "rigl-sg": "gradient"}
"""Methods that move layer budgets by the mean |momentum| or |gradient| of active weights."""
KERNEL_LEVEL = ("rigl-struct",)
"""Methods whose unit is one k×k kernel of a convolution, all its taps on or off together (the
report's RigL-struct); their non-convolution weights stay dense."""
CHANGES_EVERY_INTERVAL = DROP_AND_GROW + ("pruning",)
"""Methods whose masks change every ΔT steps: drop and grow, and gradual pruning's pruning steps."""
Distribution = Literal["uniform", "er", "erk"]


@dataclass
class SparsityConfig:
    """Every hyperparameter of sparse training, with the paper's defaults."""

    method: Method = "rigl"
    """How the masks change, one of `Method` (paper Sec. 3; report Sec. 2; docs/sweeps-and-reports.md,
    "Methods")."""
    density: float = 0.1
    """d, overall fraction of active weights among the masked ones; the report's Table 2 uses 0.1 and 0.2."""
    distribution: Distribution = "erk"
    """uniform | er | erk: how d is spread over layers (paper Sec. 3, "Sparsity Distribution")."""
    erk_power_scale: float = 1.0
    """Exponent on the ERK scores, not ER's (TF's and jaxpruner's `erk_power_scale`); 1.0 in the paper."""
    drop_fraction: float = 0.3
    """α, fraction of active weights dropped and regrown per update; 0.3 (paper Sec. 4.1)."""
    update_interval: int = 100
    """ΔT, training steps between mask updates; 100 (paper Sec. 4.1)."""
    t_end: float = 0.75
    """T_end as a fraction of all training steps; masks are frozen after it. 0.75 (paper Sec. 4.1)."""
    t_start: float = 700 / 87_891
    """Pruning only: fraction of training at which gradual pruning starts; RR starts at step 700 of
    the report's 87,891."""
    dense_layers: tuple[str | type, ...] | None = None
    """Weights kept dense and outside the budget, by name, glob pattern or module type (as
    extra_weights). None = the distribution's default: the first layer for uniform (TF, RR; not for
    rigl-struct), none for er/erk (their capping decides). () = none at all."""
    layer_densities: dict[str, float] | None = None
    """Per-layer densities by masked weight name, overriding the distribution for those layers (TF's
    custom_sparsity_map); the others share --density by the distribution."""
    extra_weights: tuple[str | type, ...] = ()
    """Weights to sparsify beyond every convolution, Linear and Conv1D: names ("lstm"), glob patterns
    ("*.in_proj_weight", "encoder.*.mlp.*") or module types (nn.LSTM); a tied weight under any name."""
    mask_depthwise: bool = False
    """Sparsify depthwise convolutions too (groups == in_channels > 1); TF's MobileNet code keeps them
    dense."""
    seed: int = 0
    """Seed of the mask generator: initial masks, tie-breaking, SET's random growth."""

    def __post_init__(self) -> None:
        _check_choice("method", self.method, Method)
        _check_choice("distribution", self.distribution, Distribution)
        _check_range("density", self.density, 0.0, 1.0, "0 < density <= 1", low_open=True)
        _check_range("drop_fraction", self.drop_fraction, 0.0, 1.0, "0 <= drop_fraction <= 1")
        _check_range("t_end", self.t_end, 0.0, 1.0, "0 < t_end <= 1", low_open=True)
        _check_range("t_start", self.t_start, 0.0, self.t_end, "0 <= t_start <= t_end")
        _check_range("erk_power_scale", self.erk_power_scale, 0.0, sys.float_info.max,
                     "0 <= erk_power_scale < inf")
        if isinstance(self.update_interval, bool) or not isinstance(self.update_interval, int) \
                or self.update_interval < 1:
            raise ValueError(f"update_interval must be an integer >= 1, got {self.update_interval!r}")
        if self.layer_densities is not None:
            self.layer_densities = checked_layer_densities(self.layer_densities, self.method)
        for field in ("dense_layers", "extra_weights"):  # a lone name is one name, not its letters
            value = getattr(self, field)
            if value is not None:
                setattr(self, field, (value,) if isinstance(value, (str, type)) else tuple(value))
                wrong = [v for v in getattr(self, field) if not isinstance(v, (str, type))]
                if wrong:
                    raise ValueError(f"{field} must hold names, glob patterns or module types, got {wrong!r}")


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
    get_sparsities_erdos_renyi). The budget is met in real numbers; TF counts each layer's in whole
    weights, which moves a layer's density by at most ~1e-4. ERK scores may be raised to
    `power_scale`; ER scores never are (TF, jaxpruner).
    """
    score = {name: erk_score(s) ** power_scale if kernel else er_score(s) for name, s in shapes.items()}
    numel = {name: math.prod(s) for name, s in shapes.items()}
    budget = density * sum(numel.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        if not sparse:
            return {name: 1.0 for name in shapes}
        # Σ_{l dense} n_l + ε Σ_{l sparse} score_l n_l = d Σ_l n_l
        weighted = sum(score[n] * numel[n] for n in sparse)
        if not 0 < weighted < math.inf:  # a large power_scale underflows (or overflows) every score
            raise ValueError(f"erk_power_scale {power_scale} takes the ERK scores of the sparse layers "
                             f"out of floating point range ({weighted}); use a smaller one (1.0 in the "
                             f"paper)")
        eps = (budget - sum(numel[n] for n in dense)) / weighted
        top = max(score[n] for n in sparse)
        if eps * top <= 1.0:
            return {name: 1.0 if name in dense else eps * score[name] for name in shapes}
        dense |= {name for name in sparse if score[name] == top}


def distribution_densities(shapes: dict[str, torch.Size], density: float,
                           config: SparsityConfig) -> dict[str, float]:
    """Density d spread over these layers by config.distribution: uniform, ER or ERK."""
    if config.distribution == "uniform":
        return uniform_densities(shapes, density)
    return erdos_renyi_densities(shapes, density, kernel=config.distribution == "erk",
                                 power_scale=config.erk_power_scale)


def initial_densities(shapes: dict[str, torch.Size], config: SparsityConfig,
                      dense_layers: tuple[str, ...] | None = None) -> dict[str, float]:
    """Every masked weight's density at the start of training, as `Sparsity` allocates it.

    1. The layers config.layer_densities names take its values (TF's custom_sparsity_map).
    2. `dense_layers` are dense; None: config.dense_layers by name, or the distribution's default
       (`dense_layers_of`, Part II: the first layer for uniform, as TF and RR).
    3. The method's rule: dense, Small-Dense and pruning start without masks; RigL-struct spreads
       over the convolutions alone (`kernel_level_densities`, Part II).
    4. The rest share d by the distribution. Layers of steps 1 and 2 stay out of that budget (as
       TF), so the whole network's density is d only if the named layers are at d.
    """
    named = config.layer_densities or {}
    unknown = [name for name in named if name not in shapes]
    if unknown:
        raise ValueError(f"layer_densities: {unknown[0]!r} is no masked weight; nearest: "
                         f"{near_candidates(unknown[0], dict.fromkeys(shapes))}")
    dense_layers = dense_layers_of(list(shapes), config) if dense_layers is None else dense_layers
    shared = {name: s for name, s in shapes.items() if name not in named and name not in dense_layers}
    if config.method in UNMASKED + ("pruning",):  # pruning starts dense
        spread = dict.fromkeys(shared, 1.0)
    elif config.method in KERNEL_LEVEL:
        spread = kernel_level_densities(shared, config)
    else:
        spread = distribution_densities(shared, config.density, config)
    return {name: named[name] if name in named else spread.get(name, 1.0) for name in shapes}


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
    values, indices = flat.topk(k, sorted=False)
    threshold = values.min()
    above = values > threshold  # every score above the k-th largest is among the top k
    tied = flat == threshold
    needed, n_tied = k - int(torch.count_nonzero(above)), int(torch.count_nonzero(tied))
    chosen = torch.randperm(n_tied, generator=generator, device=flat.device)[:needed]
    if needed == n_tied:  # no tie reaches past the k-th: the top k are the mask
        mask[indices] = True
    else:
        mask[indices[above]] = True
        mask[torch.nonzero(tied).squeeze(1)[chosen]] = True
    return mask.view_as(scores)



# ---------------------------------------------------------------------------------------------
# Schedules: the drop fraction (paper Eq. 1), gradual pruning's density, the update steps
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


@functools.lru_cache(maxsize=256)
def mean_pruning_density(final_density: float, total_steps: int, t_start: int, t_end: int) -> float:
    """E_t[d(t)] = (1/T) Σ_{t=1..T} d(t): the density that gradual pruning trains at on average."""
    total = sum(pruning_density(t, final_density, t_start, t_end) for t in range(1, total_steps + 1))
    return total / total_steps


def is_pruning_step(step: int, update_interval: int, t_start: int, t_end: int) -> bool:
    """Gradual pruning prunes every ΔT steps after t0, and once more at T_end to hit d exactly."""
    return t_start < step <= t_end and ((step - t_start) % update_interval == 0 or step == t_end)


def is_update_step(step: int, update_interval: int, t_end: int) -> bool:
    """Masks change at t = ΔT, 2ΔT, ... while t < T_end (t counts training steps from 1)."""
    return step % update_interval == 0 and step < t_end


# ---------------------------------------------------------------------------------------------
# Drop and grow   (paper Sec. 3, Algorithm 1)
# ---------------------------------------------------------------------------------------------


def drop_mask(weight: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator,
              n_active: int | None = None) -> torch.Tensor:
    """Drop: of the active weights (`n_active` of them, if counted), remove the k with the
    smallest |w|; returns those kept.

    kept = ArgTopK(|w| over active, n_active - k)
    """
    n_active = int(torch.count_nonzero(mask)) if n_active is None else n_active
    return top_k_mask(torch.where(mask, weight.abs(), -math.inf), n_active - k, generator)


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
    """Sparse training of a model's convolution, Linear and Conv1D weights by `config.method`.

    Build it after the model is on its device and the optimizer exists, then per training step:
    `loss.backward()`; `if not sparsity.replaces_optimizer_step(): optimizer.step()`;
    `sparsity.apply_masks()`; or hand `sparsity.wrap(optimizer)` to a trainer, whose step() runs
    those lines. `total_steps`, the training steps of the whole run, fixes T_end.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 config: SparsityConfig, total_steps: int):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        model = unwrapped(model)  # names without torch.compile's "_orig_mod." or DDP's "module."
        self.config, self.optimizer, self.total_steps = config, optimizer, total_steps
        self.weights = masked_weights(model, config.extra_weights, config.mask_depthwise)  # Part II
        if not self.weights:
            raise ValueError(f"the model has no trainable convolution, Linear or Conv1D weight to make "
                             f"sparse; select weights with extra_weights, among "
                             f"{list(model_weights(model))[:8]}")
        refuse_sparse_gradients(model, self.weights)  # Part II
        self.parameter_count = sum(p.numel() for p in model.parameters())
        self.dense_layers = dense_layers_of(list(self.weights), config, weight_aliases(model, self.weights))
        self.initial_densities = initial_densities({n: w.shape for n, w in self.weights.items()}, config,
                                                   self.dense_layers)
        self.t_end = int(config.t_end * total_steps)
        self.t_start = int(config.t_start * total_steps)
        if config.method == "pruning" and self.t_end <= self.t_start:
            raise ValueError(f"pruning never prunes: its start (step {self.t_start}, t_start "
                             f"{config.t_start:g}) is not before T_end (step {self.t_end}, t_end "
                             f"{config.t_end:g}) of {total_steps} steps; "
                             f"lengthen the run or move t_start and t_end apart")
        self.step_count = 0
        self.last_update = {"step": 0, "drop_fraction": 0.0, "grown": 0}
        self.masks_changed = False
        device = next(iter(self.weights.values())).device
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.masks = self._initial_masks()
        self.ever_active = {name: mask.clone() for name, mask in self.masks.items()}
        self._gradient_hooks = []  # wrap() adds them (Part II)
        self._zeroed: dict[str, tuple[torch.Tensor, int]] = {}  # Part II, "Resume in any order"
        self._keeps_zeroed = True
        self.apply_masks()
        log_dense_weights(model, self)  # Part II
        warn_if_no_update(self)  # Part II

    def _initial_masks(self) -> dict[str, torch.Tensor]:
        """Exact random masks. A layer at density 1 carries no mask: for RigL and SET an update could
        only regrow what it dropped, and layers forced dense stay dense under SNFS's redistribution
        too. Pruning masks every layer not kept dense by choice, and starts dense."""
        if self.config.method == "pruning":
            return {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()
                    if name not in self.dense_layers}
        if self.config.method in KERNEL_LEVEL:  # Part II
            return {name: random_kernel_mask(w.shape, self.initial_densities[name], self.generator)
                    for name, w in self.weights.items() if self.initial_densities[name] < 1.0}
        density = self.initial_densities
        return {name: random_mask(w.shape, active_count(density[name], w.numel()), self.generator)
                for name, w in self.weights.items() if density[name] < 1.0}

    # -- the training-loop interface ----------------------------------------------------------

    def replaces_optimizer_step(self) -> bool:
        """Count one training step; call it after `loss.backward()`. True when it replaced the
        optimizer step: skip `optimizer.step()` then.

        On an update step (t = ΔT, 2ΔT, ... < T_end) the masks drop and grow, which replaces the
        optimizer step as in TF and RR, and True is returned. Otherwise the gradients of masked
        weights are zeroed, so that the optimizer leaves masked weights and their momentum at zero
        (SNFS keeps dense gradients for its dense momentum), and False is returned.
        """
        self.step_count += 1
        cfg, t = self.config, self.step_count
        self.masks_changed = False
        if self._keeps_zeroed:  # training has begun: what the masks zeroed is no weight to restore
            self._keeps_zeroed = False
            self._zeroed.clear()
        if cfg.method in DROP_AND_GROW and is_update_step(t, cfg.update_interval, self.t_end):
            if not self.gradients_finite():  # e.g. an fp16 overflow: no ranking can be trusted
                log.warning("step %d: non-finite gradients, mask update skipped", t)
                self.mask_gradients()
                return False
            self.drop_and_grow(cosine_drop_fraction(t, cfg.drop_fraction, self.t_end))
            self.masks_changed = True
            return True
        if cfg.method == "pruning" and is_pruning_step(t, cfg.update_interval, self.t_start, self.t_end):
            self.prune(pruning_density(t, cfg.density, self.t_start, self.t_end))
            self.masks_changed = True  # pruning needs no gradient: the optimizer step still runs
        if self.masks_gradients(t):
            self.mask_gradients()
        return False

    def masks_gradients(self, step: int) -> bool:
        """Whether training step `step` zeroes the gradients of masked weights: all but drop-and-grow
        update steps, which rank dense gradients, and SNFS, whose momentum is dense."""
        cfg = self.config
        update = cfg.method in DROP_AND_GROW and is_update_step(step, cfg.update_interval, self.t_end)
        return not update and cfg.method != "snfs"

    def gradients_finite(self) -> bool:
        grads = [self.weights[name].grad for name in self.masks]
        return all(bool(torch.isfinite(g).all()) for g in grads if g is not None)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, mask in self.masks.items():
            grad = self.weights[name].grad
            if grad is not None:
                grad.mul_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Masked weights become exactly 0; call after every optimizer step. Until training begins,
        what they zero is kept (Part II, "Resume in any order")."""
        if self._keeps_zeroed:
            return apply_masks_keeping_zeroed(self)
        for name, mask in self.masks.items():
            self.weights[name].mul_(mask)

    def wrap(self, optimizer: torch.optim.Optimizer | None = None) -> SparseOptimizer:
        """The optimizer as one whose step() runs these lines, for trainers that call
        `optimizer.step()` themselves (Part II, "The wrapped optimizer")."""
        return sparse_optimizer(self, optimizer)

    # -- the mask update ----------------------------------------------------------------------

    @torch.no_grad()
    def drop_and_grow(self, drop_fraction: float) -> None:
        """One drop-and-grow update of every sparse layer with drop fraction α_t."""
        if self.config.method in KERNEL_LEVEL:
            return drop_and_grow_kernels(self, drop_fraction)  # Part II
        before = self.active_counts()
        # k = floor(α_t · n_active)   (TF sparse_optimizers_base.py)
        n_drop = {name: math.floor(drop_fraction * n) for name, n in before.items()}
        kept = {name: drop_mask(self.weights[name], mask, n_drop[name], self.generator, before[name])
                for name, mask in self.masks.items()}
        n_grow = self._regrowth_counts(n_drop, kept)
        grown = 0
        for name in self.masks:
            new = grow_mask(self.grow_scores(name), kept[name], n_grow[name], self.generator)
            assert not (new & kept[name]).any(), "grown connections must come from the unkept"
            grown += self._replace_mask(name, kept[name] | new)
        after = self.active_counts()
        if self.config.method in REDISTRIBUTING:
            assert sum(after.values()) == sum(before.values()), "redistribution keeps the global count"
        else:
            assert after == before, "an update must keep every layer's active count"
        self.last_update = {"step": self.step_count, "drop_fraction": drop_fraction, "grown": grown}

    def _regrowth_counts(self, n_drop: dict[str, int], kept: dict[str, torch.Tensor]) -> dict[str, int]:
        """RigL and SET regrow what each layer dropped. SNFS and RigL-SM redistribute the total
        by the mean |momentum| of each layer's active weights, RigL-SG by their mean |gradient|."""
        statistic = REDISTRIBUTING.get(self.config.method)
        if statistic is None:
            return n_drop
        score = {name: (self.momentum(name) if statistic == "momentum" else self.gradient(name))
                 .abs()[mask].mean().item() for name, mask in self.masks.items()}
        capacity = {name: k.numel() - int(torch.count_nonzero(k)) for name, k in kept.items()}
        return redistribute(sum(n_drop.values()), score, capacity)

    def grow_scores(self, name: str) -> torch.Tensor:
        """RigL (and RigL-SG/SM): |∂L/∂w| of the dense weight; SET: uniform noise; SNFS: |momentum|."""
        weight = self.weights[name]
        if self.config.method == "set":
            return torch.rand(weight.shape, generator=self.generator, device=weight.device)
        if self.config.method == "snfs":
            return self.momentum(name).abs()
        return self.gradient(name).abs()

    @torch.no_grad()
    def prune(self, density: float) -> None:
        """Gradual magnitude pruning: keep the round(d(t) · N) largest |w| over all pruned layers
        (global ranking, as the report's code); never grows."""
        names = list(self.masks)
        scores = torch.cat([self.weights[n].abs().masked_fill(~self.masks[n], -math.inf).flatten()
                            for n in names])
        n_keep = min(round(density * scores.numel()), sum(self.active_counts().values()))
        keep = top_k_mask(scores, n_keep, self.generator).split([self.masks[n].numel() for n in names])
        for name, kept in zip(names, keep):
            self._replace_mask(name, kept.view_as(self.masks[name]))
        self.last_update = {"step": self.step_count, "drop_fraction": 0.0, "grown": 0}

    def gradient(self, name: str) -> torch.Tensor:
        """∂L/∂w of the dense weight; a method that ranks it cannot do without it."""
        grad = self.weights[name].grad
        if grad is None:
            raise RuntimeError(
                f"{name} has no gradient at step {self.step_count}, and {self.config.method} ranks "
                f"∂L/∂w: call loss.backward() before replaces_optimizer_step() (zero the gradients "
                f"before backward, not between backward and this call)")
        return grad

    def momentum(self, name: str) -> torch.Tensor:
        """The optimizer's first moment of a weight (SGD momentum buffer or Adam's exp_avg)."""
        state = self._optimizer_state(self.weights[name])
        for key in ("momentum_buffer", "exp_avg"):
            if state.get(key) is not None:
                return state[key]
        return self.gradient(name)

    def _replace_mask(self, name: str, new: torch.Tensor) -> int:
        """Install a new mask; returns how many connections are new.

        A connection active before and after (kept, or dropped and grown back) keeps its value and
        optimizer state, as in TF. Dropped ones become 0; new ones start at 0 (paper Sec. 3)
        with their optimizer state reset to 0 (TF, jaxpruner). SNFS's momentum stays dense
        (Dettmers' code).
        """
        old, weight = self.masks[name], self.weights[name]
        survivors = new & old
        weight.mul_(survivors)
        if self.config.method != "snfs":  # per-weight tensors: SGD's momentum, Adam's exp_avg(_sq)...
            for state in self._optimizer_state(weight).values():
                if torch.is_tensor(state) and state.shape == weight.shape:
                    state.mul_(survivors)
        self.masks[name] = new
        self.ever_active[name] |= new
        return int(torch.count_nonzero(new & ~old))

    def _optimizer_state(self, weight: torch.Tensor) -> dict:
        """The optimizer's state of a weight ({} without an optimizer, or before its first step)."""
        return self.optimizer.state.get(weight, {}) if self.optimizer is not None else {}

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Train with given masks from now on, e.g. a lottery ticket: a pruning run's final masks."""
        for name, mask in masks.items():
            if name not in self.weights or mask.shape != self.weights[name].shape:
                raise ValueError(f"mask {name} of shape {tuple(mask.shape)} fits no masked weight")
        self.masks = {name: mask.to(self.generator.device, torch.bool) for name, mask in masks.items()}
        self.ever_active = {name: mask.clone() for name, mask in self.masks.items()}  # explored from here on
        for name in self.weights:  # a layer left without a mask keeps all of its weights
            bring_back_zeroed(self, name, self.masks.get(name))
        self.apply_masks()

    # -- inspection and checkpoints -----------------------------------------------------------

    def active_counts(self) -> dict[str, int]:
        """Every mask's number of active weights."""
        return {name: int(torch.count_nonzero(mask)) for name, mask in self.masks.items()}

    def layer_stats(self) -> list[dict]:
        """Per masked weight: name, shape, density, active and total weights, as masked now, and the
        fraction explored so far (None for the unmasked methods)."""
        rows, counts, explored = [], self.active_counts(), self.explored_counts()
        for name, weight in self.weights.items():
            active = counts.get(name, weight.numel())
            rows.append({"name": name, "shape": tuple(weight.shape), "density": active / weight.numel(),
                         "active": active, "total": weight.numel(),
                         "explored": None if explored is None else explored[name] / weight.numel()})
        return rows

    def densities(self) -> dict[str, float]:
        """Every masked weight's density now (SNFS and RigL-SG/SM move them; pruning lowers them)."""
        return {r["name"]: r["density"] for r in self.layer_stats()}

    def explored_counts(self) -> dict[str, int] | None:
        return explored_counts(self)  # Part II

    def exploration_rate(self) -> float | None:
        return exploration_rate(self)  # Part II

    def total_row(self) -> dict:
        """All masked weights together: name "total", active and total counts, overall density."""
        rows = self.layer_stats()
        active, total = sum(r["active"] for r in rows), sum(r["total"] for r in rows)
        return {"name": "total", "shape": "", "density": active / total, "active": active, "total": total,
                "explored": self.exploration_rate()}

    def __repr__(self) -> str:
        return describe(self)  # Part II

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "masks": {n: m.clone() for n, m in self.masks.items()},
                "ever_active": {n: m.clone() for n, m in self.ever_active.items()},
                "generator": self.generator.get_state(), "last_update": dict(self.last_update)}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict(). Masks must be boolean, of these layers and shapes, and hold as many
        active weights in all as this configuration does (but for pruning, whose count falls)."""
        masks, ever_active = state["masks"], state["ever_active"]
        for what, given in (("masks", masks), ("explored masks", ever_active)):
            self._check_mask_shapes(what, given)
        active = sum(int(torch.count_nonzero(m)) for m in masks.values())
        expected = sum(self.active_counts().values())
        if self.config.method != "pruning" and active != expected:
            raise ValueError(f"the masks hold {active:,} active weights; this configuration keeps "
                             f"{expected:,}")
        for name, mask in masks.items():
            self.masks[name] = mask.to(self.masks[name].device)
            self.ever_active[name] = ever_active[name].to(self.masks[name].device) | self.masks[name]
            bring_back_zeroed(self, name, self.masks[name])  # weights loaded before this Sparsity was built
        self.step_count = state["step_count"]
        self.generator.set_state(state["generator"].cpu())  # a trainer may have moved it
        self.last_update = dict(state["last_update"])
        self._keeps_zeroed = True  # until training resumes: a trainer may load again
        self.apply_masks()

    def _check_mask_shapes(self, what: str, masks: dict[str, torch.Tensor]) -> None:
        """Boolean masks of exactly this model's sparse layers and shapes, or a ValueError."""
        if set(masks) != set(self.masks):
            raise ValueError(f"checkpoint {what} {sorted(masks)} do not match this model's "
                             f"sparse layers {sorted(self.masks)}")
        for name, mask in masks.items():
            if mask.shape != self.masks[name].shape or mask.dtype != torch.bool:
                raise ValueError(f"{what[:-1]} {name} is {mask.dtype} of shape {tuple(mask.shape)}, expected "
                                 f"torch.bool of shape {tuple(self.masks[name].shape)}")


# =============================================================================================
# Part II. Beyond the paper: configuration checks, which weights carry masks on any model,
# inspection, resume in any order, RigL-struct, the wrapped optimizer
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# Checks of a configuration: one ValueError naming the field
# ---------------------------------------------------------------------------------------------


def _check_choice(field: str, value: object, choices: object) -> None:
    if value not in get_args(choices):
        allowed = " | ".join(get_args(choices))
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")


def checked_layer_densities(densities: object, method: str) -> dict[str, float]:
    """layer_densities as a plain dict of names to densities in (0, 1], for a method whose masks
    start at a distribution (not dense or Small-Dense, and not pruning, which starts dense)."""
    if not isinstance(densities, dict) or not all(isinstance(n, str) for n in densities):
        raise ValueError(f"layer_densities must map masked weight names to densities, got {densities!r}")
    for name, density in densities.items():
        _check_range(f"layer_densities[{name!r}]", density, 0.0, 1.0, "0 < density <= 1", low_open=True)
    if method in UNMASKED + ("pruning",):
        raise ValueError(f"layer_densities sets the initial masks, and method {method} starts without masks")
    return {name: float(density) for name, density in densities.items()}


def _check_range(field: str, value: float, low: float, high: float, rule: str,
                 low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (low_open and value == low):
        raise ValueError(f"{field} must satisfy {rule}, got {value!r}")


def warn_if_no_update(sparsity: Sparsity) -> None:
    """A WARNING, with an update interval that would do, when a drop-and-grow run is too short for
    its first update (at step ΔT) to come before T_end."""
    config, t_end = sparsity.config, sparsity.t_end
    if config.method not in DROP_AND_GROW or t_end > config.update_interval:
        return
    advice = (f"update_interval (--update-interval) {t_end - 1} or less gives one, "
              f"{max(1, (t_end - 1) // 10)} about ten" if t_end > 1 else "lengthen the run or raise t_end")
    log.warning("no mask will change: the first update is at step ΔT = %d, not before T_end = %d of %d "
                "steps; %s", config.update_interval, t_end, sparsity.total_steps, advice)


# ---------------------------------------------------------------------------------------------
# Which weights carry masks: convolutions, Linear and Conv1D by default; more when selected
# ---------------------------------------------------------------------------------------------

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
Selector = str | type
"""How extra_weights and dense_layers pick weights: a weight's name, a module's name (its weights),
a glob pattern over names ("*.in_proj_weight", "encoder.*.mlp.*"), or a module type (nn.LSTM)."""


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel (groups == in_channels > 1)."""
    return isinstance(module, CONVOLUTIONS) and module.groups == module.in_channels > 1


def masked_by_default(module: nn.Module, depthwise: bool = False) -> bool:
    """Every convolution (1-, 2- and 3-D, transposed too) and Linear, and Hugging Face's Conv1D (a
    Linear with its weight transposed, known by its name and `nf`). Depthwise convolutions only when
    `depthwise`: TF's MobileNet code never masks them, and at d = 0.1 many of their k·k filters
    would keep no weight at all."""
    if isinstance(module, CONVOLUTIONS):
        return depthwise or not is_depthwise(module)
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def model_weights(model: nn.Module) -> dict[str, tuple[nn.Parameter, nn.Module]]:
    """Every parameter of ndim >= 2 under each of its names (a tied one under all of them), with
    the module that holds it, in model order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return {name: (param, modules[name.rpartition(".")[0]])
            for name, param in model.named_parameters(remove_duplicate=False) if param.ndim >= 2}


def selects(selector: Selector, name: str, module: nn.Module | None) -> bool:
    """Whether `selector` picks the weight `name` held by `module`: a type picks the weights of
    its instances; a string matches the name, or the name of a module above it (globs allowed)."""
    if isinstance(selector, type):
        return isinstance(module, selector)
    return fnmatch.fnmatchcase(name, selector) or fnmatch.fnmatchcase(name, f"{selector}.*")


def select(selectors: tuple[Selector, ...], weights: dict[str, nn.Module | None], field: str,
           among: str) -> list[str]:
    """The names in `weights` (name -> module) that any selector picks, in their order. A selector
    that picks none is an error naming the nearest candidates."""
    picked = set()
    for selector in selectors:
        hits = {name for name, module in weights.items() if selects(selector, name, module)}
        if not hits:
            raise ValueError(f"{field}: {getattr(selector, '__name__', selector)!r} matches no {among}; "
                             f"nearest: {near_candidates(selector, weights)}")
        picked |= hits
    return [name for name in weights if name in picked]


def near_candidates(selector: Selector, weights: dict[str, nn.Module | None]) -> list[str]:
    """What the user may have meant: the closest weight and module names, or the module types."""
    if isinstance(selector, type):
        return sorted({type(module).__name__ for module in weights.values() if module is not None})
    names = list(weights) + sorted({name.rpartition(".")[0] for name in weights} - {""})
    return difflib.get_close_matches(selector, names, n=6, cutoff=0.3) or names[:6]


def masked_weights(model: nn.Module, extra: tuple[Selector, ...] = (),
                   depthwise: bool = False) -> dict[str, nn.Parameter]:
    """The weights that carry masks, in model order: those of `masked_by_default` modules and those
    that `extra` selects, only those that train (requires_grad). A tied Parameter is masked once,
    under the name that selected it: a name `extra` picks before a name picked by default."""
    weights = model_weights(model)
    named = set(select(extra, {n: m for n, (_, m) in weights.items()}, "extra_weights",
                       "weight of the model (ndim >= 2)"))
    default = {n for n, (_, module) in weights.items() if masked_by_default(module, depthwise)}
    found, seen = set(), set()
    for chosen in (named, default):
        for name, (param, _) in weights.items():
            if name in chosen and param.requires_grad and id(param) not in seen:
                found.add(name)
                seen.add(id(param))
    return {name: param for name, (param, _) in weights.items() if name in found}


def dense_parameters(model: nn.Module, masked: dict[str, nn.Parameter]) -> dict[str, str]:
    """Every weight (ndim >= 2) that carries no mask, and why: frozen, tied to a masked one, a
    depthwise convolution, or of a kind masked only when selected. Biases and norms never are."""
    owner = {id(p): n for n, p in masked.items()}
    reasons = {}
    for name, (param, module) in model_weights(model).items():
        if masked.get(name) is param:
            continue
        reasons[name] = ("frozen (requires_grad=False)" if not param.requires_grad
                         else f"tied to {owner[id(param)]}, masked there" if id(param) in owner
                         else "a depthwise convolution: mask_depthwise=True sparsifies it"
                         if is_depthwise(module)
                         else f"a {type(module).__name__} weight: select it in extra_weights to sparsify it")
    return reasons


def left_dense(model: nn.Module, masked: dict[str, nn.Parameter]) -> dict[str, nn.Module]:
    """The trainable weights (ndim >= 2) that stay dense because of their module's type, each
    Parameter once, with their modules: the weights a user may not know are dense. Only a module's
    weights count (a name with "weight" in its last part: `weight`, `weight_ih_l0`, `in_proj_weight`);
    position-bias tables, class tokens and layer scales are parameters nobody sparsifies."""
    seen = {id(p) for p in masked.values()}
    found = {}
    for name, (param, module) in model_weights(model).items():
        if param.requires_grad and id(param) not in seen and "weight" in name.rpartition(".")[2]:
            found[name] = module
            seen.add(id(param))
    return found


def refuse_sparse_gradients(model: nn.Module, weights: dict[str, nn.Parameter]) -> None:
    """A ValueError for a weight among `weights` that a module with sparse gradients holds
    (nn.Embedding or nn.EmbeddingBag built with sparse=True), under any of its names."""
    chosen = {id(w) for w in weights.values()}
    sparse = [name for name, (param, module) in model_weights(model).items()
              if id(param) in chosen and getattr(module, "sparse", False) is True]
    if sparse:
        raise ValueError(f"{sparse[0]} has sparse gradients (nn.Embedding(sparse=True)), which a mask "
                         f"update can neither rank nor mask: build it with sparse=False, or leave it out of "
                         f"extra_weights")


def unwrapped(model: nn.Module) -> nn.Module:
    """The model under torch.compile's wrapper (`_orig_mod`) and (Distributed)DataParallel's
    (`module`): the module whose parameter names the user writes."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def weight_aliases(model: nn.Module, weights: dict[str, nn.Parameter]) -> dict[str, tuple[str, nn.Module]]:
    """Every name of a masked weight (a tied one has several) -> its masked name and its module."""
    masked_name = {id(w): n for n, w in weights.items()}
    return {n: (masked_name[id(p)], m) for n, (p, m) in model_weights(model).items() if id(p) in masked_name}


def dense_layers_of(names: list[str], config: SparsityConfig,
                    candidates: dict[str, tuple[str, nn.Module | None]] | None = None) -> tuple[str, ...]:
    """The layers kept dense by choice: the masked weights that `config.dense_layers` selects, or
    by default the first layer for uniform (TF, RR) and none for ER/ERK (their capping decides).
    `candidates` maps every name of a masked weight to its masked name and module
    (`weight_aliases`); without it, the masked names alone (no module types)."""
    if config.dense_layers is None:  # RigL-struct masks the first convolution too (RR)
        uniform = config.distribution == "uniform" and config.method not in KERNEL_LEVEL
        return (names[0],) if uniform and names else ()
    candidates = candidates or {n: (n, None) for n in names}
    picked = select(config.dense_layers, {n: m for n, (_, m) in candidates.items()}, "dense_layers",
                    "masked weight")
    chosen = {candidates[n][0] for n in picked}
    return tuple(n for n in names if n in chosen)


def log_dense_weights(model: nn.Module, sparsity: Sparsity) -> None:
    """What stays dense and why: each weight without a mask at INFO with its reason; one WARNING
    for those left dense by their module's type (how many, their share of the parameters, how to
    select them); and the masked weights dense by choice, by RigL-struct and by the capping."""
    for name, reason in dense_parameters(model, sparsity.weights).items():
        log.info("left dense: %s, %s", name, reason)
    dense = left_dense(model, sparsity.weights)
    if dense:
        share = sum(model_weights(model)[n][0].numel() for n in dense) / sparsity.parameter_count
        kinds = sorted({type(m).__name__ for m in dense.values()})
        shown = ", ".join(list(dense)[:4]) + (", ..." if len(dense) > 4 else "")
        log.warning("%d weight(s), %.1f%% of the parameters, stay dense (of %s: %s): select them in "
                    "extra_weights by name, glob pattern or module type%s; or keep them dense and silence "
                    "this with logging.getLogger(\"rigl\").setLevel(logging.ERROR)", len(dense), 100 * share,
                    ", ".join(kinds), shown, "; mask_depthwise=True masks depthwise convolutions"
                    if any(is_depthwise(m) for m in dense.values()) else "")
    config = sparsity.config
    if config.method in UNMASKED:
        return
    capped = [n for n, d in sparsity.initial_densities.items() if d >= 1.0 and n not in sparsity.dense_layers]
    if config.method in KERNEL_LEVEL:
        kernelless = [n for n in capped if not has_kernels(sparsity.weights[n].shape)]
        capped = [n for n in capped if n not in kernelless]
        log.info("dense by %s (no kernels; inside the density budget): %s", config.method,
                 kernelless or "none")
    log.info("dense by choice (outside the density budget): %s", list(sparsity.dense_layers) or "none")
    log.info("dense by the %s capping: %s", config.distribution, capped or "none")


# ---------------------------------------------------------------------------------------------
# Inspection: exploration (Liu et al. 2021) and print(sparsity)
# ---------------------------------------------------------------------------------------------


def explored_counts(sparsity: Sparsity) -> dict[str, int] | None:
    """Per masked weight, how many of its weights have been active at least once since the
    start; a layer without a mask (dense by choice or capping) counts all of its weights. None
    for the unmasked methods, which explore nothing."""
    if sparsity.config.method in UNMASKED:
        return None
    return {name: int(torch.count_nonzero(sparsity.ever_active[name])) if name in sparsity.ever_active
            else weight.numel() for name, weight in sparsity.weights.items()}


def exploration_rate(sparsity: Sparsity) -> float | None:
    """In-time over-parameterisation rate (Liu et al., ICML 2021, arXiv:2102.02887): the fraction
    of all masked weights that were active at least once, R = Σ_l |ever active_l| / Σ_l n_l.
    Layers without a mask count whole, so static training's rate is its overall density: d, or
    above d where layers stay dense outside the budget (uniform's first layer: 0.1004 for WRN-22-2
    at d = 0.1). Every regrown connection new to its layer raises it."""
    explored = explored_counts(sparsity)
    if explored is None:
        return None
    return sum(explored.values()) / sum(w.numel() for w in sparsity.weights.values())


def describe(sparsity: Sparsity) -> str:
    """`print(sparsity)`. The header: the share of the parameters under masks and their density, the
    share held by weights without a mask (dense by choice, by the capping, or by the method); then
    each masked weight, and the total over all of them."""
    cfg, rows, total = sparsity.config, sparsity.layer_stats(), sparsity.total_row()
    width = max(len(r["name"]) for r in rows)
    under = sum(sparsity.weights[name].numel() for name in sparsity.masks)
    unmasked = sum(w.numel() for name, w in sparsity.weights.items() if name not in sparsity.masks)

    def share(count: int) -> str:
        return f"{100 * count / sparsity.parameter_count:.1f}% of the parameters"
    masked = (f"density={sum(sparsity.active_counts().values()) / under:.4f} under masks ({share(under)})"
              if under else "no masks")
    lines = [f"Sparsity(method={cfg.method}, distribution={cfg.distribution}, {masked}, "
             f"dense without a mask: {share(unmasked)}, "
             f"explored={'n/a' if total['explored'] is None else format(total['explored'], '.4f')}, "
             f"step={sparsity.step_count}/{sparsity.total_steps}, "
             f"update_interval={cfg.update_interval}, t_end={sparsity.t_end})"]
    lines.append(f"  {'weight':<{width}}  {'shape':<16}  {'density':>7}  {'explored':>8}  active / total")
    for r in rows + [total]:
        explored = "n/a" if r["explored"] is None else f"{r['explored']:.4f}"
        lines.append(f"  {r['name']:<{width}}  {str(r['shape']):<16}  {r['density']:7.4f}  "
                     f"{explored:>8}  {r['active']:>11,} / {r['total']:,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Resume in any order: what the masks zeroed before training, brought back by the masks loaded next
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def apply_masks_keeping_zeroed(sparsity: Sparsity) -> None:
    """`Sparsity.apply_masks` until the first training step after the Sparsity is built or loaded:
    the nonzero values it zeroes are kept with the weight's version counter, so that masks loaded
    next (load_state_dict, set_masks) bring back those they hold, unless the weight was written
    since. Building a Sparsity on a model whose trained weights are already loaded (a trainer's
    resume) and then loading its state loses no weight, in whichever order they come."""
    for name, mask in sparsity.masks.items():
        weight = sparsity.weights[name]
        zeroed = torch.where(mask, 0.0, weight)
        weight.mul_(mask)
        kept = sparsity._zeroed.pop(name, None)
        if kept is not None and kept[1] == weight._version - 1:  # untouched since: still zero there
            zeroed += kept[0]
        if zeroed.any():
            sparsity._zeroed[name] = (zeroed, weight._version)


@torch.no_grad()
def bring_back_zeroed(sparsity: Sparsity, name: str, mask: torch.Tensor | None) -> None:
    """The values that apply_masks_keeping_zeroed zeroed in weight `name` and `mask` keeps (None:
    all of them), if the weight has not been written since: they are 0 there now."""
    kept = sparsity._zeroed.pop(name, None)
    weight = sparsity.weights[name]
    if kept is None or kept[1] != weight._version:
        return
    weight.add_(kept[0] if mask is None else kept[0] * mask)
    if mask is not None:
        sparsity._zeroed[name] = (kept[0] * ~mask, weight._version)


# ---------------------------------------------------------------------------------------------
# RigL-struct: whole k×k kernels on or off   (report's supplement, "Dynamic Structured Sparsity")
# ---------------------------------------------------------------------------------------------


def has_kernels(shape: torch.Size) -> bool:
    """A convolution's weight, (n_out, n_in, k_1, ...): one kernel per (output, input) pair."""
    return len(shape) > 2


def kernel_level_densities(shapes: dict[str, torch.Size], config: SparsityConfig) -> dict[str, float]:
    """RigL-struct: weights without kernels (Linear) dense, the convolutions at the density that
    keeps the overall density d (RR's `_remove_fc_adjust_density`), spread by the distribution."""
    convolutions = {name: s for name, s in shapes.items() if has_kernels(s)}
    if not convolutions:
        raise ValueError(f"{config.method} masks the kernels of convolutions, and no masked weight is one")
    n_all = sum(math.prod(s) for s in shapes.values())
    n_conv = sum(math.prod(s) for s in convolutions.values())
    # d_conv = (d · N_all − N_dense) / N_conv, which never exceeds 1 for d <= 1
    conv_density = (config.density * n_all - (n_all - n_conv)) / n_conv
    if conv_density <= 0:
        raise ValueError(f"{config.method} keeps {n_all - n_conv:,} non-convolution weights dense, more than "
                         f"density {config.density:g} allows ({config.density * n_all:,.0f} active weights); "
                         f"use a density above {(n_all - n_conv) / n_all:.4f}")
    densities = distribution_densities(convolutions, conv_density, config)
    return {name: densities.get(name, 1.0) for name in shapes}


def kernel_mask(kernels: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An (n_out, n_in) mask of kernels as a mask of the weight's shape: every tap of a kernel
    on or off with it."""
    taps = (1,) * (len(shape) - 2)
    return kernels.view(*kernels.shape, *taps).expand(shape).contiguous()


def random_kernel_mask(shape: torch.Size, density: float, generator: torch.Generator) -> torch.Tensor:
    """A mask of whole kernels: exactly round(d · n_out · n_in) of them on (at least one), at random."""
    kernels = shape[:2]
    return kernel_mask(random_mask(kernels, active_count(density, math.prod(kernels)), generator), shape)


def kernels_of(mask: torch.Tensor) -> torch.Tensor:
    """The (n_out, n_in) kernel mask of a kernel-constant weight mask: a kernel is on if its taps are."""
    return mask.flatten(2).any(dim=-1)


def kernel_scores(tensor: torch.Tensor) -> torch.Tensor:
    """|mean over a kernel's taps| of a weight or gradient, one score per (output, input) pair
    (RR's struct-magnitude-mean and struct-absolute-gradient-mean: the mean is signed)."""
    # s_oi = |(1 / k_h k_w) Σ_taps x_oi,tap|
    return tensor.flatten(2).mean(dim=-1).abs()


def kernel_counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Every mask's number of active kernels; each kernel must be all on or all off."""
    for name, mask in masks.items():
        assert torch.equal(kernels_of(mask), mask.flatten(2).all(dim=-1)), f"{name}: a kernel is partly on"
    return {name: int(torch.count_nonzero(kernels_of(mask))) for name, mask in masks.items()}


@torch.no_grad()
def drop_and_grow_kernels(sparsity: Sparsity, drop_fraction: float) -> None:
    """RigL-struct's update, `Sparsity.drop_and_grow` for kernels: drop the active kernels of
    smallest |mean w| and grow as many of the largest |mean ∂L/∂w| over their taps, per layer
    (RR's struct-magnitude-mean pruning and struct-absolute-gradient-mean growth)."""
    before = kernel_counts(sparsity.masks)
    grown = 0
    for name, mask in sparsity.masks.items():
        weight = sparsity.weights[name]
        # k = floor(α_t · n_active kernels)
        n_drop = math.floor(drop_fraction * before[name])
        kept = drop_mask(kernel_scores(weight), kernels_of(mask), n_drop, sparsity.generator, before[name])
        new = grow_mask(kernel_scores(sparsity.gradient(name)), kept, n_drop, sparsity.generator)
        assert not (new & kept).any(), "grown kernels must come from the unkept"
        grown += sparsity._replace_mask(name, kernel_mask(kept | new, weight.shape))
    assert kernel_counts(sparsity.masks) == before, "an update must keep every layer's active kernel count"
    sparsity.last_update = {"step": sparsity.step_count, "drop_fraction": drop_fraction, "grown": grown}


# ---------------------------------------------------------------------------------------------
# The wrapped optimizer: the loop's lines inside step(), for trainers that call it themselves
# ---------------------------------------------------------------------------------------------


def sparse_optimizer(sparsity: Sparsity, optimizer: torch.optim.Optimizer | None = None) -> SparseOptimizer:
    """`Sparsity.wrap`: the optimizer as one whose step() runs the loop's lines: count the step,
    drop and grow or mask the gradients, step unless replaced, re-apply the masks. For trainers
    that call `optimizer.step()` themselves (Hugging Face Trainer, accelerate, Lightning).
    Gradients of masked weights are also zeroed as backward writes them, so that clipping between
    backward and step() sees the gradients the step uses; its state_dict() carries the masks."""
    sparsity.optimizer = sparsity.optimizer or optimizer  # its state is reset where connections grow
    if sparsity.optimizer is None or optimizer not in (None, sparsity.optimizer):
        raise ValueError("wrap(optimizer): give the optimizer this Sparsity was built with")
    if not sparsity._gradient_hooks:
        sparsity._gradient_hooks = [w.register_post_accumulate_grad_hook(mask_gradient_hook(sparsity, name))
                                    for name, w in sparsity.weights.items()]
    return SparseOptimizer(sparsity.optimizer, sparsity)


def mask_gradient_hook(sparsity: Sparsity, name: str):
    """A hook that zeroes the masked gradient of weight `name` as backward writes it, on the steps
    whose gradients the loop masks (`Sparsity.masks_gradients`)."""
    def mask_gradient(weight: torch.Tensor) -> None:
        mask = sparsity.masks.get(name)
        if mask is not None and sparsity.masks_gradients(sparsity.step_count + 1):
            weight.grad.mul_(mask)
    return mask_gradient


class SparseOptimizer(torch.optim.Optimizer):
    """`Sparsity.wrap(optimizer)`: the optimizer, with the training loop's sparse lines in step().

    A torch Optimizer, so that learning-rate schedulers, GradScaler and trainers accept it; its
    param_groups, state and defaults are the wrapped optimizer's own. It takes GradScaler's part
    in step() (`_step_supports_amp_scaling`): GradScaler calls step() on every step, with the scale
    (`grad_scale`, None once unscale_ ran) and whether it found non-finite gradients (`found_inf`).
    So a step that GradScaler skips is counted, as the README loop counts it, and changes nothing
    but what replaces_optimizer_step does on such a step: both loops agree on T_end.
    """

    _step_supports_amp_scaling = True  # GradScaler hands over grad_scale and found_inf; see step()

    def __init__(self, optimizer: torch.optim.Optimizer, sparsity: Sparsity):  # state stays in `optimizer`
        self.optimizer, self.sparsity = optimizer, sparsity

    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, value: setattr(self.optimizer, "param_groups", value))
    state = property(lambda self: self.optimizer.state,
                     lambda self, value: setattr(self.optimizer, "state", value))
    defaults = property(lambda self: self.optimizer.defaults,
                        lambda self, value: setattr(self.optimizer, "defaults", value))

    def __getattr__(self, name: str):  # hooks and flags of the wrapped optimizer
        if name in ("optimizer", "sparsity"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def step(self, closure=None):
        """The loop's lines: `if not sparsity.replaces_optimizer_step(): optimizer.step()`, then
        `sparsity.apply_masks()`. A closure (Lightning passes one) runs forward and backward first.
        Under GradScaler, the gradients are unscaled first (the update ranks true gradients) and
        the optimizer step is skipped where GradScaler found non-finite gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skipped = self._unscale()
        if not self.sparsity.replaces_optimizer_step() and not skipped:
            self.optimizer.step()
        self.sparsity.apply_masks()
        return loss

    @torch.no_grad()
    def _unscale(self) -> bool:
        """What GradScaler.step would do before the step: unscale the gradients by `grad_scale` (as
        GradScaler.unscale_, by the float32 reciprocal), unless unscale_ already did; whether it
        found non-finite gradients. False without a GradScaler."""
        scale, found_inf = self.__dict__.get("grad_scale"), self.__dict__.get("found_inf")
        if scale is not None:
            inverse = scale.double().reciprocal().float()
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad.mul_(inverse.to(param.grad.device))
        return found_inf is not None and bool(found_inf.item())

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        """The wrapped optimizer's state_dict, and the masks under "sparsity": trainers that
        checkpoint the optimizer checkpoint the masks too."""
        return {**self.optimizer.state_dict(), "sparsity": self.sparsity.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        sparsity = state_dict.pop("sparsity", None)
        self.optimizer.load_state_dict(state_dict)
        if sparsity is not None:
            self.sparsity.load_state_dict(sparsity)

    def __repr__(self) -> str:
        return f"SparseOptimizer({self.optimizer!r})"


if __name__ == "__main__":  # python rigl.py train | flops | sweep | tune | reproduce | report | bench | ...
    import runpy
    runpy.run_module("rigl_harness", run_name="__main__")  # the command line, rigl_harness/cli.py
