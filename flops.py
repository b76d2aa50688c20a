"""FLOPs of sparse training: what RigL and its baselines cost to run and to train.

Paper:     Evci, Gale, Menick, Castro, Elsen. "Rigging the Lottery: Making All Tickets Winners".
           ICML 2020, arXiv:1911.11134 (FLOP accounting of Sec. 4 and its appendix).
Report:    Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021, Table 2 and the
           appendix on FLOPs. Reference code: RR's counting/inference_train_FLOPs.py.
Counting:  fvcore's FlopCountAnalysis (github.com/facebookresearch/fvcore), read per module.
Check:     python -m pytest -q _flops_tests.py

Reproduces (paper convention, per sample, CIFAR-10 WRN-22-2 at 32×32): dense forward 3.15e8 and
training 9.45e8 FLOPs; at d = 0.2 the training / inference ratios of Table 2: Static, SET, RigL
0.20× / 0.20× (uniform), 0.35× / 0.35× (ERK); RigL 2× 0.41× / 0.20× (uniform), 0.71× / 0.35× (ERK;
the report prints 0.70×). Dense CIFAR ResNet-50 (100 classes): 2.59e9 forward.

Two conventions (state which one wherever a number is printed; ratios agree in both):

    fvcore  one fused multiply-add (MAC) is one FLOP              dense_layer_macs, *_macs
    paper   a multiply and an add are two FLOPs: PAPER_FLOPS_PER_MAC = 2   flop_report, FlopTally

Only Conv2d and Linear layers are counted, as in the paper: BatchNorm, pooling, activations, residual
additions and biases are not.

Symbols and their names here:

    f_D      f_dense          dense forward FLOPs of one sample
    f_S      f_sparse         sparse forward FLOPs of one sample, Σ_l f_D,l · d_l
    d_l      densities[name]  density of layer l, keyed like rigl.masked_weights
    ΔT       update_interval  training steps between mask updates
    t0, t1   t_start, t_end   gradual pruning: density 1 until t0, final density from t1 on

Training FLOPs per step and sample (the report's appendix, after the paper):

    dense                          3 f_D
    static, set, small-dense,      3 f_S              (forward, input gradient, weight gradient)
    lottery (a static mask)
    rigl, rigl-sg, rigl-sm         (3 ΔT f_S + 2 f_S + f_D) / (ΔT + 1)   (a dense gradient per update)
    snfs                           2 f_S + f_D        (dense gradients every step)
    pruning                        3 E_t[f_S(t)]      (mean over training of the forward cost)

Implementation choices (not in the paper):
  * FLOPs are counted for one sample of shape (1, 3, H, W) in eval mode; a layer's count is the
    multiply-adds fvcore attributes to its module (summed if the module runs more than once).
  * The pruning mean sums rigl.pruning_density over every step t = 1..T; RR changes the mask every
    100 steps, which raises the mean by about 0.2% on the report's schedule.
  * Small-Dense's sparse cost is the dense cost of the width-scaled model, layer by layer.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal, get_args

import torch
from torch import nn

import rigl

PAPER_FLOPS_PER_MAC = 2
"""The paper counts a multiply and an add as two FLOPs; fvcore counts the pair as one."""

CONVENTION = ("paper: multiplies and adds counted separately (2 × fvcore's multiply-adds); "
              "conv and linear layers only")

REPORT_PRUNING_SCHEDULE = (87_891, 700, 65_918)
"""(T, t0, t1) of the report's CIFAR pruning run (RR config): 250 epochs of 45k images at batch 128,
pruning from step 700 to 65,918 = 0.75 T."""

Method = Literal["dense", "static", "set", "small-dense", "rigl", "rigl-sg", "rigl-sm", "snfs",
                 "pruning", "lottery"]
RIGL_METHODS = ("rigl", "rigl-sg", "rigl-sm")
"""RigL and the report's redistribution variants: all take a dense gradient on update steps."""
SPARSE_METHODS = ("static", "set", "small-dense", "pruning", "lottery")
"""Methods whose every step is a sparse forward and backward pass, 3 f_S."""


def _check_method(method: str) -> None:
    if method not in get_args(Method):
        raise ValueError(f"method must be one of {' | '.join(get_args(Method))}, got {method!r}")


# ---------------------------------------------------------------------------------------------
# Forward FLOPs of a network
# ---------------------------------------------------------------------------------------------


def _flop_count_analysis():
    """fvcore's FlopCountAnalysis; importing fvcore.nn scripts a loss and warns about jit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def dense_layer_macs(model: nn.Module, input_size: int) -> dict[str, int]:
    """Dense forward multiply-adds of every masked weight for one (1, 3, H, W) sample, by fvcore."""
    param = next(model.parameters())
    sample = torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = _flop_count_analysis()(model, sample)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    # "group1.0.conv1.weight" -> module "group1.0.conv1"; a bare "weight" is the root module ""
    return {name: int(by_module[name.rpartition(".")[0]]) for name in rigl.masked_weights(model)}


def sparse_forward_macs(dense_macs: dict[str, int], densities: dict[str, float]) -> float:
    """f_S: a sparse layer costs its dense FLOPs times its density."""
    if densities.keys() != dense_macs.keys():
        missing = sorted(dense_macs.keys() ^ densities.keys())
        raise ValueError(f"densities and dense_macs must name the same layers; differ in {missing}")
    # f_S = Σ_l f_D,l · d_l
    return sum(dense_macs[name] * densities[name] for name in dense_macs)


# ---------------------------------------------------------------------------------------------
# Training FLOPs per step and sample   (report appendix, after the paper)
# ---------------------------------------------------------------------------------------------


def dense_train_flops(f_dense: float) -> float:
    """Forward, gradient of the activations, gradient of the weights: 3 f_D."""
    return 3 * f_dense


def sparse_train_flops(f_sparse: float) -> float:
    """The same three passes through sparse layers: 3 f_S."""
    return 3 * f_sparse


def dense_gradient_step_flops(f_sparse: float, f_dense: float) -> float:
    """A sparse forward and input gradient, and the dense weight gradient: 2 f_S + f_D."""
    return 2 * f_sparse + f_dense


def rigl_train_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    """ΔT sparse steps and one step with a dense gradient, averaged over the ΔT + 1 steps."""
    # (3 ΔT f_S + 2 f_S + f_D) / (ΔT + 1)
    return (3 * update_interval * f_sparse + 2 * f_sparse + f_dense) / (update_interval + 1)


def train_step_flops(method: str, f_sparse: float, f_dense: float, update_interval: int = 100) -> float:
    """Average training cost of one step per sample, in the unit of f_sparse and f_dense.

    For pruning pass f_sparse = E_t[f_S(t)] (mean_pruning_forward_macs); for small-dense, the
    dense forward cost of the small model.
    """
    _check_method(method)
    if method == "dense":
        return dense_train_flops(f_dense)
    if method in RIGL_METHODS:
        return rigl_train_flops(f_sparse, f_dense, update_interval)
    if method == "snfs":
        return dense_gradient_step_flops(f_sparse, f_dense)
    return sparse_train_flops(f_sparse)


def step_flops(method: str, f_sparse: float, f_dense: float, is_update_step: bool) -> float:
    """Cost of one actual training step per sample, f_sparse being that step's forward cost.

    RigL pays the dense gradient only on the steps that update the masks; summed over a run this
    gives the exact count that train_step_flops approximates with one update per ΔT + 1 steps.
    """
    _check_method(method)
    if method == "dense":
        return dense_train_flops(f_dense)
    if method == "snfs" or (method in RIGL_METHODS and is_update_step):
        return dense_gradient_step_flops(f_sparse, f_dense)
    return sparse_train_flops(f_sparse)


# ---------------------------------------------------------------------------------------------
# Gradual magnitude pruning: the forward cost falls during training   (Zhu & Gupta 2017)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def mean_pruning_density(final_density: float, total_steps: int, t_start: int, t_end: int) -> float:
    """E_t[d(t)] = (1/T) Σ_{t=1..T} d(t) along rigl.pruning_density."""
    total = sum(rigl.pruning_density(t, final_density, t_start, t_end) for t in range(1, total_steps + 1))
    return total / total_steps


def mean_pruning_forward_macs(dense_macs: dict[str, int], final_densities: dict[str, float],
                              total_steps: int, t_start: int, t_end: int) -> float:
    """E_t[f_S(t)]: every layer pruned from density 1 to its final density on the same schedule."""
    mean_densities = {name: mean_pruning_density(d, total_steps, t_start, t_end)
                      for name, d in final_densities.items()}
    # E_t[f_S(t)] = Σ_l f_D,l · E_t[d_l(t)]
    return sparse_forward_macs(dense_macs, mean_densities)


# ---------------------------------------------------------------------------------------------
# The report: per-layer table and the ratios of Table 2, in the paper's convention
# ---------------------------------------------------------------------------------------------


def layer_rows(model: nn.Module, dense_macs: dict[str, int], densities: dict[str, float]) -> list[dict]:
    """One row per masked weight: name, shape, density, params and FLOPs (paper convention)."""
    weights = rigl.masked_weights(model)
    return [dict(name=name, shape=list(weights[name].shape), density=densities[name],
                 params=weights[name].numel(), dense_flops=PAPER_FLOPS_PER_MAC * macs,
                 sparse_flops=PAPER_FLOPS_PER_MAC * macs * densities[name])
            for name, macs in dense_macs.items()]


def flop_report(model: nn.Module, input_size: int, densities: dict[str, float], method: str,
                update_interval: int = 100, multiplier: float = 1.0,
                small_dense_model: nn.Module | None = None,
                pruning_schedule: tuple[int, int, int] | None = None) -> dict:
    """FLOPs of `model` at `densities` trained by `method`, per sample, in the paper's convention.

    dense: densities are ignored (all 1). small-dense: f_S and the rows are `small_dense_model`'s.
    pruning: `densities` are the final ones (inference); training uses their mean over
    `pruning_schedule` = (T, t0, t1), by default the report's REPORT_PRUNING_SCHEDULE.
    train_flops_ratio is relative to the dense model on the 1× schedule: multiplier × train / 3 f_D.
    """
    _check_method(method)
    if not multiplier > 0:
        raise ValueError(f"multiplier must be > 0, got {multiplier!r}")
    dense_macs = dense_layer_macs(model, input_size)
    f_dense = PAPER_FLOPS_PER_MAC * sum(dense_macs.values())
    rows_model, rows_macs = model, dense_macs
    if method == "dense":
        densities = {name: 1.0 for name in dense_macs}
    if method == "small-dense":
        if small_dense_model is None:
            raise ValueError("method small-dense needs small_dense_model, the width-scaled dense model")
        rows_model, rows_macs = small_dense_model, dense_layer_macs(small_dense_model, input_size)
        densities = {name: 1.0 for name in rows_macs}
    f_sparse = PAPER_FLOPS_PER_MAC * sparse_forward_macs(rows_macs, densities)
    f_train_sparse = f_sparse
    if method == "pruning":
        schedule = pruning_schedule or REPORT_PRUNING_SCHEDULE
        f_train_sparse = PAPER_FLOPS_PER_MAC * mean_pruning_forward_macs(dense_macs, densities, *schedule)
    train = train_step_flops(method, f_train_sparse, f_dense, update_interval)
    return dict(layers=layer_rows(rows_model, rows_macs, densities),
                dense_forward_flops=f_dense, sparse_forward_flops=f_sparse,
                inference_flops_ratio=f_sparse / f_dense, train_step_flops=train,
                # ratio to dense training on the 1× schedule: N × train / (3 f_D)
                train_flops_ratio=multiplier * train / dense_train_flops(f_dense),
                convention=CONVENTION)


# ---------------------------------------------------------------------------------------------
# Counting a run as it trains
# ---------------------------------------------------------------------------------------------


class FlopTally:
    """Training FLOPs of a run so far: Σ_steps step_flops · batch_size.

    Pass f_sparse and f_dense in the paper's convention (as flop_report gives them) and `total`
    is in that convention. Save state_dict() with the checkpoint so a resumed run keeps its count.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.steps = 0

    def add(self, method: str, f_sparse: float, f_dense: float, is_update_step: bool,
            batch_size: int) -> None:
        self.total += step_flops(method, f_sparse, f_dense, is_update_step) * batch_size
        self.steps += 1

    def state_dict(self) -> dict:
        return {"total": self.total, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.steps = float(state["total"]), int(state["steps"])

    def __repr__(self) -> str:
        return f"FlopTally(total={self.total:.4g} FLOPs ({CONVENTION.split(':')[0]}), steps={self.steps})"


# ---------------------------------------------------------------------------------------------
# The columns of the report's Table 2 for every method, from the initial allocation
# ---------------------------------------------------------------------------------------------


def method_table(model: nn.Module, input_size: int, density: float, update_interval: int = 100,
                 multiplier: float = 1.0, small_dense_model: nn.Module | None = None) -> list[dict]:
    """Training and inference FLOPs ×dense of every method at `density`, uniform and ERK.

    Rows: method, distribution, train_flops_ratio, inference_flops_ratio. SNFS and pruning are
    estimated from the initial allocation: their real test FLOPs depend on the masks they end with
    (SNFS redistributes, the report's pruning ranks globally), which only a run can tell.
    """
    dense_macs = dense_layer_macs(model, input_size)
    f_dense = PAPER_FLOPS_PER_MAC * sum(dense_macs.values())
    rows = [dict(method="dense", distribution="-", train_flops_ratio=multiplier,
                 inference_flops_ratio=1.0)]
    for distribution in ("uniform", "erk"):
        densities = rigl.model_densities(model, rigl.SparsityConfig(density=density,
                                                                    distribution=distribution))
        f_sparse = PAPER_FLOPS_PER_MAC * sparse_forward_macs(dense_macs, densities)
        for method in ("static", "set", "rigl", "snfs", "pruning"):
            f_train = f_sparse
            if method == "pruning":
                f_train = PAPER_FLOPS_PER_MAC * mean_pruning_forward_macs(
                    dense_macs, densities, *REPORT_PRUNING_SCHEDULE)
            train = train_step_flops(method, f_train, f_dense, update_interval)
            rows.append(dict(method=method, distribution=distribution,
                             train_flops_ratio=multiplier * train / dense_train_flops(f_dense),
                             inference_flops_ratio=f_sparse / f_dense))
    if small_dense_model is not None:
        f_small = PAPER_FLOPS_PER_MAC * sum(dense_layer_macs(small_dense_model, input_size).values())
        rows.append(dict(method="small-dense", distribution="-",
                         train_flops_ratio=multiplier * f_small / f_dense,
                         inference_flops_ratio=f_small / f_dense))
    return rows
