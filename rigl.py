"""RigL: Rigging the Lottery, dynamic sparse training in one file.

Paper:     Evci, Gale, Menick, Castro, Elsen. "Rigging the Lottery: Making All Tickets Winners".
           ICML 2020, arXiv:1911.11134. Reference code: github.com/google-research/rigl ("TF").
Report:    Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021.
           Reference code: github.com/varun19299/rigl-reproducibility ("RR").
Baselines: SET (Mocanu et al. 2018), SNFS / sparse momentum (Dettmers & Zettlemoyer 2019),
           static sparsity, dense training.

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
    ε        erk_scale          the ER/ERK normaliser that meets the density budget

This part of the file (configuration, layer densities, masks, schedule, drop and grow, the
`Sparsity` holder) imports only torch and the standard library, so it can be copied on its own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

log = logging.getLogger("rigl")

Method = Literal["rigl", "set", "snfs", "static", "dense"]
Distribution = Literal["uniform", "er", "erk"]
GrowInit = Literal["zeros"]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class SparsityConfig:
    """Every hyperparameter of sparse training, with the paper's defaults."""

    method: Method = "rigl"
    """rigl | set | snfs | static | dense: how the masks change (paper Sec. 3, report Sec. 2)."""
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
    if config.method == "dense":
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


def default_dense_layers(names: list[str], distribution: Distribution) -> tuple[str, ...]:
    """Uniform keeps the first layer dense (TF, RR); ER/ERK decide by their capping alone."""
    return (names[0],) if distribution == "uniform" and names else ()


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

    The scores are shuffled before the selection, so equal scores are chosen at random instead
    of by index order; unequal scores keep their exact order. (TF instead adds N(0, 1e-5) noise
    to the scores, which also reorders near-equal ones.)
    """
    flat = scores.flatten()
    perm = torch.randperm(flat.numel(), generator=generator, device=flat.device)
    chosen = perm[flat[perm].topk(k, sorted=False).indices]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[chosen] = True
    return mask.view_as(scores)


# ---------------------------------------------------------------------------------------------
# Drop-fraction schedule   (paper Eq. 1)
# ---------------------------------------------------------------------------------------------


def cosine_drop_fraction(step: int, drop_fraction: float, t_end: int) -> float:
    """f_decay(t) = α/2 · (1 + cos(π t / T_end)) for t < T_end, and 0 from T_end on."""
    if step >= t_end:
        return 0.0
    return drop_fraction / 2 * (1 + math.cos(math.pi * step / t_end))


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
        self.dense_layers = self._resolve_dense_layers(config.dense_layers)
        self.densities = layer_densities({n: w.shape for n, w in self.weights.items()},
                                         config, self.dense_layers)
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
        self.apply_masks()
        self._log_dense_choice()

    def _resolve_dense_layers(self, requested: tuple[str, ...] | None) -> tuple[str, ...]:
        names = list(self.weights)
        if requested is None:
            return default_dense_layers(names, self.config.distribution)
        resolved = tuple(n if n in self.weights else f"{n}.weight" for n in requested)
        unknown = [n for n, r in zip(requested, resolved) if r not in self.weights]
        if unknown:
            raise ValueError(f"dense_layers names no masked layer: {unknown}; "
                             f"the masked layers are {names}")
        return resolved

    def _log_dense_choice(self) -> None:
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
        cfg = self.config
        if cfg.method in ("rigl", "set", "snfs") and \
                is_update_step(self.step_count, cfg.update_interval, self.t_end):
            self.update_masks(cosine_drop_fraction(self.step_count, cfg.drop_fraction, self.t_end))
            return True
        if cfg.method != "snfs":
            self.mask_gradients()
        return False

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
        """RigL and SET regrow what each layer dropped; SNFS redistributes the total by momentum."""
        if self.config.method != "snfs":
            return n_drop
        mean_momentum = {name: self.momentum(name).abs()[mask].mean().item()
                         for name, mask in self.masks.items()}
        capacity = {name: k.numel() - int(k.sum()) for name, k in kept.items()}
        return redistribute(sum(n_drop.values()), mean_momentum, capacity)

    def grow_scores(self, name: str) -> torch.Tensor:
        """RigL: |∂L/∂w| of the dense weight; SET: uniform noise; SNFS: |momentum|."""
        weight = self.weights[name]
        if self.config.method == "set":
            return torch.rand(weight.shape, generator=self.generator, device=weight.device)
        if self.config.method == "snfs":
            return self.momentum(name).abs()
        return weight.grad.abs() if weight.grad is not None else torch.zeros_like(weight)

    def momentum(self, name: str) -> torch.Tensor:
        """The optimizer's first moment of a weight (SGD momentum buffer or Adam's exp_avg)."""
        weight = self.weights[name]
        state = self.optimizer.state.get(weight, {}) if self.optimizer is not None else {}
        for key in ("momentum_buffer", "exp_avg"):
            if state.get(key) is not None:
                return state[key]
        return weight.grad if weight.grad is not None else torch.zeros_like(weight)

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

    def _check_counts(self, before: dict[str, int]) -> None:
        after = {name: int(mask.sum()) for name, mask in self.masks.items()}
        if self.config.method == "snfs":
            assert sum(after.values()) == sum(before.values()), "SNFS must keep the global count"
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
