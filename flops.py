"""FLOPs of sparse training: counts what it is given (a model, its masked layers, their densities).

Paper:     Evci, Gale, Menick, Castro, Elsen. "Rigging the Lottery: Making All Tickets Winners".
           ICML 2020, arXiv:1911.11134 (FLOP accounting of Sec. 4 and its appendix).
Report:    Sundar & Dwaraknath. "[Re] Rigging the Lottery". ReScience C 7(2), 2021, Table 2 and the
           appendix on FLOPs. Reference code: RR's counting/inference_train_FLOPs.py.
Counting:  fvcore's FlopCountAnalysis (github.com/facebookresearch/fvcore), read per module.
Check:     tests/test_flops.py (`python -m pytest -q tests/test_flops.py`).

It stands on rigl.py (the layer densities) and models.py (the networks), and fvcore counts.
Small-Dense's width (`small_dense_width`) is solved here, where weights are counted; which method
pays for a dense gradient is said here (DENSE_GRADIENT), and `method_flops` counts a method as
`train` runs it.

Two conventions (state which one wherever a number is printed; ratios agree in both):

    fvcore  one fused multiply-add (MAC) is one FLOP              dense_layer_macs, *_macs
    paper   a multiply and an add are two FLOPs: PAPER_FLOPS_PER_MAC = 2   flop_report, FlopTally

Only Conv2d and Linear layers are counted, as in the paper: BatchNorm, pooling, activations, residual
additions and biases are not.

Symbols and their names here:

    f_D      f_dense          dense forward FLOPs of one sample
    f_S      f_sparse         sparse forward FLOPs of one sample, Σ_l f_D,l · d_l
    d_l      densities[name]  density of layer l, keyed by the weight's name ("group1.0.conv1.weight")
    ΔT       update_interval  training steps between mask updates

Training FLOPs per step and sample (the report's appendix, after the paper), by when a method needs
the dense gradient of the weights (`dense_gradient`):

    "never"         3 f_S      forward, input gradient, weight gradient (dense training: f_S = f_D)
    "update steps"  (3 ΔT f_S + 2 f_S + f_D) / (ΔT + 1)     RigL: a dense gradient per mask update
    "every step"    2 f_S + f_D                            SNFS: dense gradients for dense momentum

Implementation choices (not in the paper):
  * FLOPs are counted for one sample of shape (1, 3, H, W) in eval mode; a layer's count is the
    multiply-adds fvcore attributes to its module (summed if the module runs more than once).
  * Gradual pruning trains on E_t[f_S(t)]: method_flops averages its layer densities along the
    run's `total_steps` and hands them to flop_report as `train_densities`.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Literal, get_args

import torch
from torch import nn

from models import DATASET_SHAPES, build_model, width_scale_for
from rigl import KERNEL_LEVEL, SparsityConfig, active_count, initial_densities, masked_weights, mean_pruning_density

PAPER_FLOPS_PER_MAC = 2
"""The paper counts a multiply and an add as two FLOPs; fvcore counts the pair as one."""

CONVENTION = ("paper: multiplies and adds counted separately (2 × fvcore's multiply-adds); "
              "conv and linear layers only")

DenseGradient = Literal["never", "update steps", "every step"]
"""When a method computes the dense gradient of the weights, which the accounting charges as f_D."""

DENSE_GRADIENT: dict[str, DenseGradient] = {"rigl": "update steps", "rigl-sg": "update steps",
                                            "rigl-sm": "update steps", "rigl-struct": "update steps",
                                            "snfs": "every step"}
"""When a method needs the dense gradient ∂L/∂W: RigL to grow, SNFS for its dense momentum; the
others never do (paper Sec. 4, report appendix)."""

NO_DISTRIBUTION = "-"
"""How a method without masks (dense, Small-Dense) shows its layer distribution: it has none."""


# ---------------------------------------------------------------------------------------------
# Forward FLOPs of a network
# ---------------------------------------------------------------------------------------------


def _flop_count_analysis():
    """fvcore's FlopCountAnalysis; importing fvcore.nn scripts a loss and warns about jit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def dense_layer_macs(model: nn.Module, weight_names: list[str], input_size: int) -> dict[str, int]:
    """Dense forward multiply-adds of each named weight's module for one (1, 3, H, W) sample."""
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
    return {name: int(by_module[name.rpartition(".")[0]]) for name in weight_names}


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


def sparse_train_flops(f_sparse: float) -> float:
    """Forward, gradient of the activations, gradient of the weights, all sparse: 3 f_S."""
    return 3 * f_sparse


def dense_gradient_step_flops(f_sparse: float, f_dense: float) -> float:
    """A sparse forward and input gradient, and the dense weight gradient: 2 f_S + f_D."""
    return 2 * f_sparse + f_dense


def rigl_train_flops(f_sparse: float, f_dense: float, update_interval: int) -> float:
    """ΔT sparse steps and one step with a dense gradient, averaged over the ΔT + 1 steps."""
    # (3 ΔT f_S + 2 f_S + f_D) / (ΔT + 1)
    return (3 * update_interval * f_sparse + 2 * f_sparse + f_dense) / (update_interval + 1)


def _check_rule(dense_gradient: str) -> None:
    if dense_gradient not in get_args(DenseGradient):
        allowed = " | ".join(get_args(DenseGradient))
        raise ValueError(f"dense_gradient must be one of {allowed}, got {dense_gradient!r}")


def train_step_flops(f_sparse: float, f_dense: float, dense_gradient: DenseGradient = "never",
                     update_interval: int = 100) -> float:
    """Average training cost of one step per sample, in the unit of f_sparse and f_dense."""
    _check_rule(dense_gradient)
    if dense_gradient == "update steps":
        return rigl_train_flops(f_sparse, f_dense, update_interval)
    if dense_gradient == "every step":
        return dense_gradient_step_flops(f_sparse, f_dense)
    return sparse_train_flops(f_sparse)


def pays_dense_gradient(method: str, mask_update: bool) -> bool:
    """Whether this training step of `method` computes the dense gradient (DENSE_GRADIENT)."""
    rule = DENSE_GRADIENT.get(method, "never")
    return rule == "every step" or (rule == "update steps" and mask_update)


def step_flops(f_sparse: float, f_dense: float, dense_gradient_now: bool) -> float:
    """Cost of one actual training step per sample, f_sparse being that step's forward cost.

    Summed over a run this gives the exact count that train_step_flops approximates with one
    dense gradient per ΔT + 1 steps.
    """
    return dense_gradient_step_flops(f_sparse, f_dense) if dense_gradient_now else sparse_train_flops(f_sparse)


# ---------------------------------------------------------------------------------------------
# The report: per-layer table and the ratios of Table 2, in the paper's convention
# ---------------------------------------------------------------------------------------------


def layer_rows(shapes: dict[str, torch.Size], dense_macs: dict[str, int],
               densities: dict[str, float]) -> list[dict]:
    """One row per masked weight: name, shape, density, params and FLOPs (paper convention)."""
    return [dict(name=name, shape=list(shapes[name]), density=densities[name],
                 params=int(torch.Size(shapes[name]).numel()), dense_flops=PAPER_FLOPS_PER_MAC * macs,
                 sparse_flops=PAPER_FLOPS_PER_MAC * macs * densities[name])
            for name, macs in dense_macs.items()]


def flop_report(shapes: dict[str, torch.Size], dense_macs: dict[str, int], densities: dict[str, float],
                dense_gradient: DenseGradient = "never", update_interval: int = 100,
                multiplier: float = 1.0, train_densities: dict[str, float] | None = None,
                reference_macs: dict[str, int] | None = None) -> dict:
    """FLOPs of a network with these layers at `densities`, per sample, in the paper's convention.

    `train_densities`: the densities averaged over training, where they change (gradual pruning);
    by default `densities`. `reference_macs`: the dense network the ratios are relative to, when it
    is not this one (Small-Dense is compared with the full-width model).
    train_flops_ratio is relative to dense training on the 1× schedule: multiplier × train / 3 f_D.
    """
    if not multiplier > 0:
        raise ValueError(f"multiplier must be > 0, got {multiplier!r}")
    f_dense = PAPER_FLOPS_PER_MAC * sum((reference_macs or dense_macs).values())
    f_sparse = PAPER_FLOPS_PER_MAC * sparse_forward_macs(dense_macs, densities)
    f_train = PAPER_FLOPS_PER_MAC * sparse_forward_macs(dense_macs, train_densities or densities)
    train = train_step_flops(f_train, f_dense, dense_gradient, update_interval)
    return dict(layers=layer_rows(shapes, dense_macs, densities),
                dense_forward_flops=f_dense, sparse_forward_flops=f_sparse,
                inference_flops_ratio=f_sparse / f_dense, train_step_flops=train,
                # ratio to dense training on the 1× schedule: N × train / (3 f_D)
                train_flops_ratio=multiplier * train / sparse_train_flops(f_dense),
                convention=CONVENTION)


# ---------------------------------------------------------------------------------------------
# Each method as `train` runs it, and the columns of the report's Table 2
# ---------------------------------------------------------------------------------------------


def small_dense_width(name: str, num_classes: int, sparse_cfg: SparsityConfig) -> float:
    """Small-Dense: the channel scale at which the dense model has as many conv and linear weights
    as the sparse model has active ones (RR scales by √d; we solve for the count, by bisection).
    The one definition: `train` builds this network and `flops` counts it."""
    with torch.device("meta"):
        full = masked_weights(build_model(name, num_classes))
    sparse = initial_densities({n: w.shape for n, w in full.items()}, replace(sparse_cfg, method="static"))
    target = sum(active_count(sparse[n], w.numel()) for n, w in full.items())
    return width_scale_for(name, num_classes, target,
                           lambda model: sum(w.numel() for w in masked_weights(model).values()))


def counted_model(model_name: str, dataset: str, width_scale: float = 1.0) -> tuple[dict, dict]:
    """(shapes, dense multiply-adds) of every masked weight of a freshly built model."""
    classes, size = DATASET_SHAPES[dataset]
    model = build_model(model_name, classes, width_scale=width_scale)
    weights = masked_weights(model)
    return {n: w.shape for n, w in weights.items()}, dense_layer_macs(model, list(weights), size)


def method_flops(model_name: str, dataset: str, sparse_cfg: SparsityConfig, multiplier: float,
                 counted: tuple[dict, dict] | None = None, total_steps: int | None = None) -> dict:
    """flop_report of `model_name` trained by `sparse_cfg.method`, as `train` would run it: the
    same network (Small-Dense's width), densities and dense-gradient needs. Pruning needs
    `total_steps`, the run's training steps, along which its density is averaged."""
    method = sparse_cfg.method
    shapes, dense_macs = counted or counted_model(model_name, dataset)
    common = dict(dense_gradient=DENSE_GRADIENT.get(method, "never"),
                  update_interval=sparse_cfg.update_interval, multiplier=multiplier)
    if method == "dense":
        return flop_report(shapes, dense_macs, dict.fromkeys(shapes, 1.0), **common)
    if method == "small-dense":
        width = small_dense_width(model_name, DATASET_SHAPES[dataset][0], sparse_cfg)
        small_shapes, small_macs = counted_model(model_name, dataset, width)
        return flop_report(small_shapes, small_macs, dict.fromkeys(small_shapes, 1.0),
                           reference_macs=dense_macs, **common)
    # The distribution's allocation. For pruning it stands for the final masks (an estimate: the
    # report's pruning ranks globally, so only a run knows its final layer densities), and it
    # trains at their mean along the report's schedule. RigL-struct's allocation is its own (Linear
    # dense, convolutions denser).
    allocation = initial_densities(shapes, replace(sparse_cfg, method=method if method in KERNEL_LEVEL else "static"))
    train_densities = None
    if method == "pruning":
        if total_steps is None:
            raise ValueError("pruning's training FLOPs follow its schedule: give the run's total_steps")
        t0, t1 = int(sparse_cfg.t_start * total_steps), int(sparse_cfg.t_end * total_steps)
        train_densities = {n: mean_pruning_density(d, total_steps, t0, t1) for n, d in allocation.items()}
    return flop_report(shapes, dense_macs, allocation, train_densities=train_densities, **common)


def inference_macs(counted: tuple[dict, dict], sparse_cfg: SparsityConfig) -> float:
    """f_S in multiply-adds of the masks `sparse_cfg` starts with (its distribution's allocation)."""
    shapes, dense_macs = counted
    return sparse_forward_macs(dense_macs, initial_densities(shapes, replace(sparse_cfg, method="static")))


def matching_density(model_name: str, dataset: str, sparse_cfg: SparsityConfig, target: str = "uniform",
                     counted: tuple[dict, dict] | None = None) -> float:
    """The density at which `sparse_cfg.distribution` has the inference FLOPs of `target` at
    `sparse_cfg.density` (report, "Sparsity Distribution vs FLOP Consumption"): ERK spends more
    FLOPs than uniform at one density, so at equal FLOPs it trains sparser. The target keeps its
    default dense layers (uniform: the first layer, as every uniform run). Solved by bisection on
    the density, counted as method_flops counts (real-valued layer densities, conv and linear only)."""
    counted = counted or counted_model(model_name, dataset)
    goal = inference_macs(counted, replace(sparse_cfg, distribution=target, dense_layers=None))
    low, high = 0.0, 1.0
    if inference_macs(counted, replace(sparse_cfg, density=high)) < goal:
        raise ValueError(f"{sparse_cfg.distribution} spends fewer FLOPs at density 1 than {target} at "
                         f"{sparse_cfg.density}: no density matches")
    # f_S(d) grows with d: halve [low, high] until it pins f_S(d) = goal to 1e-12 in d
    while high - low > 1e-12:
        middle = (low + high) / 2
        low, high = (middle, high) if inference_macs(counted, replace(sparse_cfg, density=middle)) < goal else (low, middle)
    return round(high, 10)


TABLE2_CELLS = [("dense", NO_DISTRIBUTION)] + [(m, d) for d in ("uniform", "erk")
                                               for m in ("static", "set", "rigl", "snfs", "pruning")] \
    + [("small-dense", NO_DISTRIBUTION)]
"""The rows of the report's Table 2: (method, distribution)."""


def table2_columns(model_name: str, dataset: str, sparse_cfg: SparsityConfig, multiplier: float,
                   total_steps: int) -> list[dict]:
    """Training and inference FLOPs ×dense of every method of the report's Table 2 at d, in runs
    of `total_steps` steps. A method without masks is counted as `train` builds it at the
    configuration's default distribution."""
    counted = counted_model(model_name, dataset)
    rows = []
    for method, distribution in TABLE2_CELLS:
        spread = SparsityConfig.distribution if distribution == NO_DISTRIBUTION else distribution
        result = method_flops(model_name, dataset, replace(sparse_cfg, method=method, distribution=spread),
                              multiplier, counted, total_steps)
        rows.append(dict(method=method, distribution=distribution, train_flops_ratio=result["train_flops_ratio"],
                         inference_flops_ratio=result["inference_flops_ratio"]))
    return rows


def print_flop_report(report: dict, title: str, console) -> None:
    """The per-layer table, the inference and training lines, and Table 2's columns if present."""
    from rich.table import Table
    layers = Table("layer", "shape", "density", "params", "dense FLOPs", "sparse FLOPs", title=title)
    for r in report["layers"]:
        layers.add_row(r["name"], str(tuple(r["shape"])), f"{r['density']:.4f}", f"{r['params']:,}",
                       f"{r['dense_flops']:.4e}", f"{r['sparse_flops']:.4e}")
    console.print(layers)
    console.print(f"inference FLOPs {report['sparse_forward_flops']:.4e} per sample, "
                  f"{report['inference_flops_ratio']:.3f}× dense ({report['dense_forward_flops']:.4e})")
    console.print(f"training FLOPs {report['train_step_flops']:.4e} per step per sample, "
                  f"{report['train_flops_ratio']:.3f}× dense on the 1× schedule")
    methods = Table("method", "distribution", "train ×dense", "test ×dense",
                    title="Table 2 columns (SNFS and pruning from the initial allocation)")
    for r in report.get("methods", []):
        methods.add_row(r["method"], r["distribution"], f"{r['train_flops_ratio']:.2f}",
                        f"{r['inference_flops_ratio']:.2f}")
    console.print(methods)
    console.print(f"convention: {report['convention']}", highlight=False)


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

    def add(self, f_sparse: float, f_dense: float, dense_gradient_now: bool, batch_size: int) -> None:
        self.total += step_flops(f_sparse, f_dense, dense_gradient_now) * batch_size
        self.steps += 1

    def state_dict(self) -> dict:
        return {"total": self.total, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.steps = float(state["total"]), int(state["steps"])

    def __repr__(self) -> str:
        return f"FlopTally(total={self.total:.4g} FLOPs ({CONVENTION.split(':')[0]}), steps={self.steps})"
