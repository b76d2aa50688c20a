"""Tests of the claims rigl.py and its modules make, a section per module: `python -m pytest -q`."""

import copy
import csv
import io
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import commands
import export
import flops
import models
import report
import recipes
import rigl
import sparse_inference
from models import MODEL_NAMES_HELP, Bottleneck, WideBasicBlock, build_model
from recipes import REPORT_STEPS, TrainConfig, resolve_recipe
from rigl import Sparsity, SparsityConfig


# --- Helpers shared by the sections below ---------------------------------------------------------


SPARSE_METHODS = ["rigl", "set", "snfs", "static", "rigl-sg", "rigl-sm"]


def small_net() -> nn.Module:
    """A few conv and linear layers of different shapes, fast on CPU."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def train(model, optimizer, sparsity, steps, batch=8):
    """The README's training loop on random data."""
    for _ in range(steps):
        x, y = torch.randn(batch, 3, 8, 8), torch.randint(0, 10, (batch,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if not sparsity.replaces_optimizer_step():
            optimizer.step()
        sparsity.apply_masks()


def shapes_of(model: nn.Module) -> dict[str, torch.Size]:
    return {name: w.shape for name, w in rigl.masked_weights(model).items()}


def wrn_shapes() -> dict[str, torch.Size]:
    return shapes_of(build_model("wrn-22-2", num_classes=10))


def rich_console():
    return Console(file=io.StringIO())


REPO = pathlib.Path(__file__).parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "rigl.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_first_epoch(process, out, timeout=300):
    """Return once `out` holds a finished epoch, failing if the process ends first."""
    deadline = time.time() + timeout
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.05)


# --- rigl.py: layer densities (uniform, ER, ERK) --------------------------------------------------


@pytest.mark.parametrize("distribution", ["erk", "er"])
@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_erdos_renyi_budget_and_shape_of_solution(distribution, density):
    shapes = wrn_shapes()
    cfg = SparsityConfig(density=density, distribution=distribution)
    densities = rigl.distribute_density(shapes, cfg, dense_layers=())
    numel = {n: math.prod(s) for n, s in shapes.items()}
    counts = {n: rigl.active_count(d, numel[n]) for n, d in densities.items()}
    # The budget: Σ active = d · Σ n, up to the rounding of one weight per layer.
    assert abs(sum(counts.values()) - density * sum(numel.values())) <= len(shapes)
    # The solution's shape: sparse layers at ε · score_l with one ε; dense ones have the largest scores.
    score = rigl.erk_score if distribution == "erk" else rigl.er_score
    sparse = [n for n, d in densities.items() if d < 1]
    eps = {densities[n] / score(shapes[n]) for n in sparse}
    assert max(eps) - min(eps) < 1e-9 * max(eps)
    dense = [n for n in shapes if n not in sparse]
    if dense:
        assert min(score(shapes[n]) for n in dense) >= max(score(shapes[n]) for n in sparse)
    assert all(0 < densities[n] <= 1 for n in shapes)


def test_erk_power_scale_changes_erk_and_leaves_er_alone():
    """TF and jaxpruner raise ERK's scores to erk_power_scale and never ER's."""
    shapes = wrn_shapes()

    def densities(distribution, power):
        cfg = SparsityConfig(density=0.1, distribution=distribution, erk_power_scale=power)
        return rigl.distribute_density(shapes, cfg, dense_layers=())
    assert densities("er", 0.5) == densities("er", 1.0)
    half = densities("erk", 0.5)
    assert half != densities("erk", 1.0)
    eps = {half[n] / rigl.erk_score(shapes[n]) ** 0.5 for n, d in half.items() if d < 1}
    assert max(eps) - min(eps) < 1e-9 * max(eps)  # d_l = ε · score_l^0.5


@pytest.mark.parametrize("density, expected_shortcuts", [(0.2, 3), (0.1, 2)])
def test_erk_dense_layers_of_wrn_22_2_are_the_reference_ones(density, expected_shortcuts):
    """TF's get_sparsities_erdos_renyi on WRN-22-2: at d = 0.2 conv1, all three 1x1 shortcuts and the
    linear layer are dense; at d = 0.1 conv1, two of the shortcuts and the linear layer."""
    shapes = wrn_shapes()
    densities = rigl.distribute_density(shapes, SparsityConfig(density=density), dense_layers=())
    dense = [n for n, d in densities.items() if d >= 1]
    names = list(shapes)
    shortcuts = [n for n in dense if shapes[n][2:] == (1, 1)]
    assert names[0] in dense and names[-1] in dense
    assert len(shortcuts) == expected_shortcuts
    assert len(dense) == 2 + expected_shortcuts


def test_the_authors_convention_keeps_conv1_dense_outside_the_erk_budget():
    """Our ERK masks the first convolution too (RR, jaxpruner): ResNet-50's conv1 gets 0.42 at
    d = 0.1. The authors' scripts never mask it: dense_layers=("conv1",) is their convention, conv1
    at 1 and the other layers meeting d among themselves."""
    shapes = shapes_of(build_model("resnet50", 1000))
    ours = rigl.initial_densities(shapes, SparsityConfig(density=0.1))
    assert round(ours["conv1.weight"], 2) == 0.42
    authors = rigl.initial_densities(shapes, SparsityConfig(density=0.1, dense_layers=("conv1",)))
    assert authors["conv1.weight"] == 1.0
    rest = {n: math.prod(s) for n, s in shapes.items() if n != "conv1.weight"}
    active = sum(rigl.active_count(authors[n], count) for n, count in rest.items())
    assert abs(active - 0.1 * sum(rest.values())) <= len(rest)


def test_uniform_keeps_the_first_layer_dense_outside_the_budget():
    model = build_model("wrn-22-2", num_classes=10)
    sparsity = Sparsity(model, None, SparsityConfig(density=0.1, distribution="uniform"), 100)
    rows = sparsity.layer_stats()
    assert rows[0]["name"] == "conv1.weight" and rows[0]["density"] == 1.0
    for row in rows[1:]:
        assert row["active"] == round(0.1 * row["total"])
    assert sparsity.dense_layers == ("conv1.weight",)


def test_dense_layers_override_and_unknown_names():
    model = small_net()
    cfg = SparsityConfig(density=0.2, distribution="uniform", dense_layers=("4", "10.weight"))
    sparsity = Sparsity(model, None, cfg, 100)
    assert set(sparsity.dense_layers) == {"4.weight", "10.weight"}
    assert "4.weight" not in sparsity.masks and "0.weight" in sparsity.masks  # first layer now sparse
    with pytest.raises(ValueError, match="dense_layers names no masked layer: \\['nope'\\]"):
        Sparsity(model, None, SparsityConfig(dense_layers=("nope",)), 100)


# --- rigl.py: masks, and the invariants every method keeps ----------------------------------------


def test_initial_masks_are_seeded_and_exact():
    a = rigl.random_mask(torch.Size([50, 40]), 123, torch.Generator().manual_seed(1))
    b = rigl.random_mask(torch.Size([50, 40]), 123, torch.Generator().manual_seed(1))
    c = rigl.random_mask(torch.Size([50, 40]), 123, torch.Generator().manual_seed(2))
    assert int(a.sum()) == 123 and torch.equal(a, b) and not torch.equal(a, c)


def test_ties_are_broken_without_index_bias():
    scores = torch.zeros(1000)
    picks = [torch.where(rigl.top_k_mask(scores, 10, torch.Generator().manual_seed(s)))[0]
             for s in range(20)]
    assert not any(torch.equal(p, torch.arange(10)) for p in picks)
    assert len({tuple(p.tolist()) for p in picks}) == 20
    mean_index = torch.cat(picks).float().mean()
    assert 350 < mean_index < 650  # index bias would put it near 4.5 (or 995)
    # Unequal scores keep their exact order whatever the shuffle.
    distinct = torch.randperm(1000).float()
    assert torch.equal(torch.where(rigl.top_k_mask(distinct, 10, torch.Generator()))[0],
                       torch.sort(torch.topk(distinct, 10).indices).values)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_exact_active_counts_after_init_and_50_updates(method):
    model = small_net()
    optimizer = sgd(model)
    cfg = SparsityConfig(method=method, density=0.3, distribution="erk", update_interval=2, t_end=1.0)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=101)
    expected = {n: rigl.active_count(sparsity.initial_densities[n], w.numel()) for n, w in sparsity.weights.items()}
    counts = {r["name"]: r["active"] for r in sparsity.layer_stats()}
    assert counts == expected
    assert len(sparsity.masks) >= 3  # the test means something only if layers are sparse

    updates = 0
    for _ in range(100):
        train(model, optimizer, sparsity, 1)
        updates += sparsity.last_update["step"] == sparsity.step_count
        counts = {r["name"]: r["active"] for r in sparsity.layer_stats()}
        nonzero = {n: int((w != 0).sum()) for n, w in sparsity.weights.items()}
        if method in rigl.REDISTRIBUTING:  # they move budget between layers, never the global count
            assert sum(counts.values()) == sum(expected.values())
        else:
            assert counts == expected
        assert all(nonzero[n] <= counts[n] for n in counts)
    assert sparsity.step_count == 100
    if method == "static":
        assert updates == 0
    else:
        assert updates == 50


@pytest.mark.parametrize("method", ["rigl", "set", "static"])
def test_masked_weights_and_their_momentum_stay_exactly_zero(method):
    model = small_net()
    optimizer = sgd(model)
    cfg = SparsityConfig(method=method, density=0.2, update_interval=3, t_end=1.0)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=30)
    for _ in range(30):
        train(model, optimizer, sparsity, 1)
        for name, mask in sparsity.masks.items():
            weight = sparsity.weights[name]
            assert torch.all(weight[~mask] == 0), name
            buffer = optimizer.state[weight].get("momentum_buffer")
            if buffer is not None:
                assert torch.all(buffer[~mask] == 0), name


def test_dense_method_has_no_masks_and_never_updates():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method="dense", update_interval=1), 10)
    assert sparsity.masks == {}
    before = [p.clone() for p in model.parameters()]
    train(model, optimizer, sparsity, 3)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --- rigl.py: drop and grow, each method's rule ---------------------------------------------------


def slow_rigl_update(weight, grad, mask, k):
    """Drop the k active weights of smallest |w|, then grow the k unkept ones of largest |g|, by
    sorting Python lists (magnitudes are distinct, so no ties)."""
    w, g, m = weight.flatten().tolist(), grad.flatten().tolist(), mask.flatten().tolist()
    active = sorted((i for i in range(len(w)) if m[i]), key=lambda i: abs(w[i]))
    kept = set(active[k:])
    candidates = sorted((i for i in range(len(w)) if i not in kept), key=lambda i: -abs(g[i]))
    new = kept | set(candidates[:k])
    return torch.tensor([i in new for i in range(len(w))]).view_as(mask)


@pytest.mark.parametrize("seed", range(5))
def test_rigl_drops_smallest_weights_and_grows_largest_gradients(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(40, 30, bias=False)
    sparsity = Sparsity(layer, None, SparsityConfig(density=0.25, seed=seed), total_steps=100)
    mask = sparsity.masks["weight"]
    layer.weight.grad = torch.randn_like(layer.weight)
    alpha = 0.3
    k = math.floor(alpha * int(mask.sum()))
    expected = slow_rigl_update(layer.weight.detach(), layer.weight.grad, mask, k)
    sparsity.drop_and_grow(alpha)
    assert torch.equal(sparsity.masks["weight"], expected)


def test_drop_chooses_among_active_weights_even_when_they_are_zero():
    """Freshly grown weights are exactly 0, like the masked ones: drop must still keep only
    active connections."""
    mask = rigl.random_mask(torch.Size([20, 20]), 100, torch.Generator().manual_seed(0))
    kept = rigl.drop_mask(torch.zeros(20, 20), mask, 30, torch.Generator().manual_seed(1))
    assert int(kept.sum()) == 70 and not (kept & ~mask).any()


def test_grown_connections_start_at_zero_with_zero_momentum_and_regrown_ones_keep_theirs():
    """Our choice (TF's): a connection dropped and grown back in one update is not new, so it keeps
    its value and momentum; a new connection starts at 0 with its momentum reset to 0."""
    torch.manual_seed(0)
    layer = nn.Linear(10, 10, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    sparsity = Sparsity(layer, optimizer, SparsityConfig(density=0.5), total_steps=100)
    mask = sparsity.masks["weight"].clone()
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 101.0).view(10, 10) * mask)
    buffer = torch.full((10, 10), 7.0)
    optimizer.state[layer.weight]["momentum_buffer"] = buffer
    # The smallest active weight will be dropped; give it the largest gradient so it comes back.
    smallest = torch.where(mask.flatten())[0][0]
    grad = torch.rand(100) * (~mask.flatten())
    grad[smallest] = 10.0
    layer.weight.grad = grad.view(10, 10)
    sparsity.drop_and_grow(0.2)  # k = 10
    new = sparsity.masks["weight"]
    grown = new & ~mask
    assert int(grown.sum()) == 9  # 10 dropped; 9 new connections plus the one grown back
    assert torch.all(layer.weight[grown] == 0) and torch.all(buffer[grown] == 0)
    assert layer.weight.flatten()[smallest] == smallest + 1  # the regrown one kept its value
    assert buffer.flatten()[smallest] == 7.0                 # ... and its momentum
    dropped = mask & ~new
    assert torch.all(layer.weight[dropped] == 0) and torch.all(buffer[dropped] == 0)


def test_grown_adam_moments_are_reset():
    torch.manual_seed(0)
    layer = nn.Linear(20, 20, bias=False)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    sparsity = Sparsity(layer, optimizer, SparsityConfig(density=0.3), total_steps=100)
    old = sparsity.masks["weight"].clone()
    layer(torch.randn(4, 20)).sum().backward()
    optimizer.step()
    state = optimizer.state[layer.weight]
    state["exp_avg"].fill_(1.0), state["exp_avg_sq"].fill_(1.0)
    layer.weight.grad = torch.randn_like(layer.weight)
    sparsity.drop_and_grow(0.3)
    grown = sparsity.masks["weight"] & ~old
    assert grown.any()
    assert torch.all(state["exp_avg"][grown] == 0) and torch.all(state["exp_avg_sq"][grown] == 0)


def test_snfs_keeps_dense_momentum_but_sparse_weights():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method="snfs", density=0.2), total_steps=100)
    train(model, optimizer, sparsity, 5)
    name, mask = next(iter(sparsity.masks.items()))
    weight = sparsity.weights[name]
    assert torch.all(weight[~mask] == 0)
    assert (optimizer.state[weight]["momentum_buffer"][~mask] != 0).float().mean() > 0.5


def test_snfs_grows_largest_momentum_and_moves_budget_to_the_layer_with_larger_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 30, bias=False), nn.Linear(30, 30, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = SparsityConfig(method="snfs", density=0.2, dense_layers=())
    sparsity = Sparsity(model, optimizer, cfg, total_steps=100)
    old = {n: m.clone() for n, m in sparsity.masks.items()}
    before = {n: w.detach().clone() for n, w in sparsity.weights.items()}
    for scale, weight in zip([1.0, 3.0], sparsity.weights.values()):
        weight.grad = torch.randn_like(weight)  # must be ignored: SNFS grows by momentum
        optimizer.state[weight]["momentum_buffer"] = torch.randn_like(weight) * scale
    sparsity.drop_and_grow(0.3)
    counts = {n: int(m.sum()) for n, m in sparsity.masks.items()}
    first, second = list(old)
    moved = counts[second] - int(old[second].sum())
    assert moved == int(old[first].sum()) - counts[first] > 0
    # Within a layer: drop the smallest |w|, grow the largest |momentum| among the rest.
    for name, weight in sparsity.weights.items():
        n_keep = int(old[name].sum()) - math.floor(0.3 * int(old[name].sum()))
        kept = torch.zeros(900, dtype=torch.bool)
        kept[before[name].abs().masked_fill(~old[name], -1).flatten().topk(n_keep).indices] = True
        momentum = optimizer.state[weight]["momentum_buffer"].abs().flatten()
        grown = torch.zeros(900, dtype=torch.bool)
        grown[momentum.masked_fill(kept, -1).topk(counts[name] - n_keep).indices] = True
        assert torch.equal(sparsity.masks[name], (kept | grown).view(30, 30)), name


def test_redistribute_is_proportional_exact_and_capped():
    grow = rigl.redistribute(100, {"a": 1.0, "b": 3.0, "c": 0.0}, {"a": 1000, "b": 1000, "c": 1000})
    assert grow == {"a": 25, "b": 75, "c": 0}
    grow = rigl.redistribute(100, {"a": 1.0, "b": 3.0}, {"a": 1000, "b": 40})
    assert grow == {"a": 60, "b": 40}
    grow = rigl.redistribute(10, {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 5, "b": 5, "c": 5})
    assert sum(grow.values()) == 10 and max(grow.values()) == 4


def test_pruning_reaches_the_target_count_at_t_end_and_never_grows():
    model = small_net()
    optimizer = sgd(model)
    cfg = SparsityConfig(method="pruning", density=0.2, update_interval=3, t_start=0.1, t_end=0.75)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=40)
    total = sum(m.numel() for m in sparsity.masks.values())
    assert sum(int(m.sum()) for m in sparsity.masks.values()) == total  # starts dense
    assert (sparsity.t_start, sparsity.t_end) == (4, 30)
    previous = {n: m.clone() for n, m in sparsity.masks.items()}
    pruned_at = []
    for step in range(1, 41):
        train(model, optimizer, sparsity, 1)
        assert all(not (m & ~previous[n]).any() for n, m in sparsity.masks.items())  # never grows
        active = sum(int(m.sum()) for m in sparsity.masks.values())
        if sparsity.masks_changed:
            pruned_at.append(step)
            assert active == round(rigl.pruning_density(step, 0.2, 4, 30) * total)
        previous = {n: m.clone() for n, m in sparsity.masks.items()}
        for name, mask in sparsity.masks.items():
            assert torch.all(sparsity.weights[name][~mask] == 0)
    assert pruned_at == [7, 10, 13, 16, 19, 22, 25, 28, 30]
    assert active == round(0.2 * total)


def two_layers_with_statistics(method: str, gradient_scales, momentum_scales, seed: int = 0):
    """Two 30×30 linear layers at d = 0.2 whose gradients and momenta have the given scales."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(30, 30, bias=False), nn.Linear(30, 30, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = SparsityConfig(method=method, density=0.2, dense_layers=(), seed=seed)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=100)
    for g, m, weight in zip(gradient_scales, momentum_scales, sparsity.weights.values()):
        weight.grad = torch.randn_like(weight) * g
        optimizer.state[weight]["momentum_buffer"] = torch.randn_like(weight) * m
    return sparsity, optimizer


@pytest.mark.parametrize("method, grows", [("rigl-sg", "first"), ("rigl-sm", "second")])
def test_rigl_sg_redistributes_by_gradient_and_rigl_sm_by_momentum(method, grows):
    """Gradients are larger in the first layer, momenta in the second: RigL-SG moves budget to the
    first, RigL-SM to the second. Within a layer both grow by |gradient|, as RigL."""
    sparsity, _ = two_layers_with_statistics(method, gradient_scales=(5.0, 1.0), momentum_scales=(1.0, 5.0))
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    grads = {n: w.grad.clone() for n, w in sparsity.weights.items()}
    sparsity.drop_and_grow(0.3)
    first, second = list(before)
    gained = {n: int(sparsity.masks[n].sum()) - int(before[n].sum()) for n in before}
    winner, loser = (first, second) if grows == "first" else (second, first)
    assert gained[winner] == -gained[loser] > 0
    for name, mask in sparsity.masks.items():
        grown = mask & ~before[name]
        candidates = grads[name].abs()[~mask & ~before[name]]  # neither kept nor grown
        assert grads[name].abs()[grown].min() >= candidates.max(), name  # the largest |gradient|


def test_rigl_and_set_keep_each_layers_count_whatever_the_statistics():
    for method in ("rigl", "set"):
        sparsity, _ = two_layers_with_statistics(method, gradient_scales=(5.0, 1.0), momentum_scales=(1.0, 5.0))
        before = {n: int(m.sum()) for n, m in sparsity.masks.items()}
        sparsity.drop_and_grow(0.3)
        assert {n: int(m.sum()) for n, m in sparsity.masks.items()} == before, method


def grown_by(method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grown, candidates, |gradient|) of one update of a 40×50 layer at d = 0.3 whose gradient
    magnitude rises with the index, so that growing by gradient picks the last candidates."""
    torch.manual_seed(0)
    layer = nn.Linear(50, 40, bias=False)
    sparsity = Sparsity(layer, None, SparsityConfig(method=method, density=0.3, seed=seed), total_steps=100)
    before = sparsity.masks["weight"].clone()
    layer.weight.grad = torch.linspace(0.01, 1.0, 2000).view(40, 50)
    sparsity.drop_and_grow(0.3)
    after = sparsity.masks["weight"]
    kept = after & before
    return (after & ~kept).flatten(), (~kept).flatten(), layer.weight.grad.abs().flatten()


def test_set_grows_uniformly_at_random_whatever_the_gradient():
    """SET's grown connections are a uniform draw among the unkept: over many seeds their mean
    |gradient| is the candidates' mean (RigL's would be near the top), and seeds differ."""
    means, sets = [], set()
    for seed in range(20):
        grown, candidates, gradient = grown_by("set", seed)
        means.append(float(gradient[grown].mean()) / float(gradient[candidates].mean()))
        sets.add(tuple(torch.where(grown)[0].tolist()))
    assert len(sets) == 20
    assert abs(sum(means) / len(means) - 1) < 0.05  # RigL: about 1.6 here (test below)
    assert max(means) < 1.2


def test_rigl_grows_the_largest_gradients():
    for seed in range(3):
        grown, candidates, gradient = grown_by("rigl", seed)
        assert float(gradient[grown].min()) >= float(gradient[candidates & ~grown].max())
        assert float(gradient[grown].mean()) / float(gradient[candidates].mean()) > 1.5


def test_pruning_ranks_magnitudes_across_all_layers():
    """Gradual magnitude pruning keeps the globally largest |w| (RR): a layer of large weights
    keeps more of them than one of small weights, at one threshold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 30, bias=False), nn.Linear(30, 30, bias=False))
    sparsity = Sparsity(model, None, SparsityConfig(method="pruning", density=0.2, dense_layers=()), 100)
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(30, 30) * 3.0)
        model[1].weight.copy_(torch.randn(30, 30))
    sparsity.prune(0.5)
    kept = {n: int(m.sum()) for n, m in sparsity.masks.items()}
    assert sum(kept.values()) == 900 and kept["0.weight"] > 600 > kept["1.weight"]
    weights = {n: w.detach() for n, w in sparsity.weights.items()}
    smallest_kept = min(float(w[sparsity.masks[n]].abs().min()) for n, w in weights.items())
    largest_dropped = max(float(w[~sparsity.masks[n]].abs().max()) for n, w in weights.items())
    assert smallest_kept >= largest_dropped


def test_static_masks_never_change():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method="static", density=0.2, update_interval=1), 20)
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    train(model, optimizer, sparsity, 20)
    assert all(torch.equal(before[n], m) for n, m in sparsity.masks.items())


@pytest.mark.parametrize("method", rigl.DROP_AND_GROW)
def test_every_update_replaces_the_optimizer_step(method):
    """Our choice, RR's and jaxpruner's for every method (TF's for RigL; TF's SET steps, then
    updates): on an update step the caller skips optimizer.step(), so no weight moves but by the
    mask update, which only zeroes dropped ones and starts grown ones at 0."""
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method=method, density=0.3, update_interval=1), 10)
    train(model, optimizer, sparsity, 0)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.arange(4)).backward()
    before = {n: w.detach().clone() for n, w in sparsity.weights.items()}
    assert sparsity.replaces_optimizer_step() is True
    for name, weight in sparsity.weights.items():
        mask = sparsity.masks.get(name, torch.ones_like(weight, dtype=torch.bool))
        assert torch.equal(weight.detach(), before[name] * mask), name


def test_an_update_with_non_finite_gradients_is_skipped_with_a_warning(caplog):
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.3, update_interval=1), total_steps=10)
    before = {n: m.clone() for n, m in sparsity.masks.items()}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    next(iter(sparsity.weights.values())).grad[0, 0, 0, 0] = math.inf  # an fp16 overflow
    with caplog.at_level("WARNING", logger="rigl"):
        assert sparsity.replaces_optimizer_step() is False  # the optimizer step runs (GradScaler skips it in fp16)
    assert "non-finite gradients, mask update skipped" in caplog.text
    assert all(torch.equal(before[n], m) for n, m in sparsity.masks.items())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert sparsity.replaces_optimizer_step() is True  # finite again: the next update goes ahead


def test_accumulated_micro_batches_grow_where_one_big_batch_does():
    """N micro-batches of B, each loss divided by N, give the gradient of one batch of N·B (no
    batch norm), hence the same RigL growth; the training loop relies on this for --accumulate."""
    def grown_after(micro_batches):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 10))
        sparsity = Sparsity(model, None, SparsityConfig(density=0.3, dense_layers=()), total_steps=10)
        x, y = torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
        for xb, yb in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            (nn.functional.cross_entropy(model(xb), yb) / micro_batches).backward()
        sparsity.drop_and_grow(0.3)
        return {n: m.clone() for n, m in sparsity.masks.items()}
    one, four = grown_after(1), grown_after(4)
    assert all(torch.equal(one[n], four[n]) for n in one)


# --- rigl.py: schedule ----------------------------------------------------------------------------


def test_cosine_schedule_endpoints():
    assert rigl.cosine_drop_fraction(0, 0.3, 750) == pytest.approx(0.3)
    assert rigl.cosine_drop_fraction(375, 0.3, 750) == pytest.approx(0.15)
    assert rigl.cosine_drop_fraction(750, 0.3, 750) == 0.0
    assert rigl.cosine_drop_fraction(900, 0.3, 750) == 0.0


@pytest.mark.parametrize("final_density", [0.1, 0.2, 0.5])
def test_mean_pruning_density_matches_closed_form(final_density):
    """Cubic schedule: ∫ d(t) over [t0, t1] is (t1 - t0)(1 - 3/4 s_f), so
    E_t[d] = [t0 + (t1 - t0)(1 - 3/4 s_f) + (T - t1) d_f] / T."""
    total, t0, t1 = 10_000, 500, 7_500
    s_f = 1 - final_density
    mean_density = (t0 + (t1 - t0) * (1 - 0.75 * s_f) + (total - t1) * final_density) / total
    assert rigl.mean_pruning_density(final_density, total, t0, t1) == pytest.approx(mean_density, rel=1e-3)


def test_updates_start_at_delta_t_and_stop_before_t_end():
    """Documented choice: the first update is on the ΔT-th training step (RR's step ΔT-1 counted
    from 0); the last strictly before T_end = t_end · total_steps."""
    model = small_net()
    optimizer = sgd(model)
    cfg = SparsityConfig(density=0.3, update_interval=10, t_end=0.5)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=100)
    update_steps = []
    for step in range(1, 101):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,)))
        optimizer.zero_grad()
        loss.backward()
        if sparsity.replaces_optimizer_step():
            update_steps.append(step)
            alpha = rigl.cosine_drop_fraction(step, 0.3, 50)
            assert sparsity.last_update["drop_fraction"] == pytest.approx(alpha)
        else:
            optimizer.step()
        sparsity.apply_masks()
    assert sparsity.t_end == 50
    assert update_steps == [10, 20, 30, 40]


# --- rigl.py: the holder's checkpoints and configuration ------------------------------------------


def test_state_dict_round_trip_restores_masks_counters_and_generator():
    def run(resume_at=None):
        torch.manual_seed(0)
        model = small_net()
        optimizer = sgd(model)
        cfg = SparsityConfig(method="set", density=0.3, update_interval=3)
        sparsity = Sparsity(model, optimizer, cfg, total_steps=40)
        train(model, optimizer, sparsity, 20)
        if resume_at:
            state = {"model": model.state_dict(), "opt": optimizer.state_dict(),
                     "sparsity": sparsity.state_dict(), "rng": torch.get_rng_state()}
            model, optimizer = small_net(), None
            optimizer = sgd(model)
            sparsity = Sparsity(model, optimizer, SparsityConfig(method="set", density=0.3,
                                                                 update_interval=3, seed=99), 40)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["opt"])
            sparsity.load_state_dict(state["sparsity"])
            torch.set_rng_state(state["rng"])
        train(model, optimizer, sparsity, 20)
        return sparsity
    straight, resumed = run(), run(resume_at=20)
    assert resumed.step_count == straight.step_count == 40
    assert resumed.last_update == straight.last_update
    for name in straight.masks:
        assert torch.equal(straight.masks[name], resumed.masks[name])
        assert torch.equal(straight.weights[name], resumed.weights[name])


def test_load_state_dict_refuses_other_layers():
    sparsity = Sparsity(small_net(), None, SparsityConfig(), 10)
    other = Sparsity(nn.Linear(4, 4), None, SparsityConfig(), 10)
    with pytest.raises(ValueError, match="do not match"):
        sparsity.load_state_dict(other.state_dict())


def test_a_tied_weight_is_masked_once_and_a_frozen_one_never(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20, bias=False), nn.ReLU(), nn.Linear(20, 20, bias=False),
                          nn.Linear(20, 10))
    model[2].weight = model[0].weight  # tied
    model[3].weight.requires_grad_(False)  # frozen
    with caplog.at_level("INFO", logger="rigl"):
        sparsity = Sparsity(model, None, SparsityConfig(density=0.3, dense_layers=()), 10)
    assert list(sparsity.weights) == ["0.weight"]
    assert sparsity.total_row()["total"] == 400  # counted once
    assert "2.weight, tied to 0.weight" in caplog.text and "3.weight, frozen" in caplog.text


def attention_and_conv1d_net() -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(8, 16, 3, padding=1)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):  # x: (batch, 8 channels, 12 positions)
            h = self.conv(x).transpose(1, 2)
            return self.head(self.attn(h, h, h)[0].mean(1))
    torch.manual_seed(0)
    return Net()


def test_other_layers_are_logged_dense_or_sparsified_when_named(caplog):
    with caplog.at_level("INFO", logger="rigl"):
        Sparsity(attention_and_conv1d_net(), None, SparsityConfig(density=0.2), 10)
    assert "conv.weight, a Conv1d parameter: name it in extra_weights" in caplog.text
    assert "attn.in_proj_weight, a MultiheadAttention parameter" in caplog.text
    model = attention_and_conv1d_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = SparsityConfig(density=0.2, update_interval=2, t_end=1.0, extra_weights=("conv", "attn.in_proj_weight"))
    sparsity = Sparsity(model, optimizer, cfg, total_steps=20)
    assert set(sparsity.weights) == {"conv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "head.weight"}
    counts, grown = {r["name"]: r["active"] for r in sparsity.layer_stats()}, 0
    for _ in range(20):  # the README's loop
        loss = nn.functional.cross_entropy(model(torch.randn(6, 8, 12)), torch.randint(0, 4, (6,)))
        optimizer.zero_grad()
        loss.backward()
        if not sparsity.replaces_optimizer_step():
            optimizer.step()
        else:
            grown += sparsity.last_update["grown"]
        sparsity.apply_masks()
    assert {r["name"]: r["active"] for r in sparsity.layer_stats()} == counts
    assert grown > 0
    for name, mask in sparsity.masks.items():
        assert torch.all(sparsity.weights[name][~mask] == 0), name
    with pytest.raises(ValueError, match="extra_weights: 'attn.bias_k' names no weight"):
        Sparsity(model, None, SparsityConfig(extra_weights="attn.bias_k"), 10)


def test_an_update_without_gradients_is_an_error_for_methods_that_rank_them():
    model = small_net()
    sparsity = Sparsity(model, sgd(model), SparsityConfig(density=0.3, update_interval=1), 10)
    with pytest.raises(RuntimeError, match="has no gradient at step 1, and rigl ranks ∂L/∂w: call loss.backward"):
        sparsity.replaces_optimizer_step()  # backward forgotten
    model = small_net()
    sparsity = Sparsity(model, sgd(model), SparsityConfig(method="set", density=0.3, update_interval=1), 10)
    assert sparsity.replaces_optimizer_step() is True  # SET grows at random: no gradient needed


def test_a_lone_name_is_one_name():
    assert SparsityConfig(dense_layers="conv1").dense_layers == ("conv1",)
    assert SparsityConfig(extra_weights="attn.in_proj_weight").extra_weights == ("attn.in_proj_weight",)


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.float() * 0.5, "is torch.float32"),
    (lambda m: torch.ones_like(m), "the masks hold"),
])
def test_load_state_dict_refuses_masks_of_another_kind_or_count(damage, message):
    sparsity = Sparsity(small_net(), None, SparsityConfig(density=0.3), 10)
    state = sparsity.state_dict()
    name = next(iter(state["masks"]))
    state["masks"][name] = damage(state["masks"][name])
    with pytest.raises(ValueError, match=message):
        Sparsity(small_net(), None, SparsityConfig(density=0.3), 10).load_state_dict(state)


@pytest.mark.parametrize("field, value, message", [
    ("density", 0.0, "density must satisfy 0 < density <= 1"),
    ("density", -0.1, "density must satisfy 0 < density <= 1"),
    ("density", 1.5, "density must satisfy 0 < density <= 1"),
    ("distribution", "gaussian", "distribution must be one of uniform | er | erk"),
    ("method", "magic", "method must be one of rigl | set | snfs | static | dense | pruning"),
    ("update_interval", 0, "update_interval must be an integer >= 1"),
    ("update_interval", 2.5, "update_interval must be an integer >= 1"),
    ("drop_fraction", -0.1, "drop_fraction must satisfy 0 <= drop_fraction <= 1"),
    ("drop_fraction", 1.1, "drop_fraction must satisfy 0 <= drop_fraction <= 1"),
    ("t_end", 0.0, "t_end must satisfy 0 < t_end <= 1"),
])
def test_bad_configuration_names_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SparsityConfig(**{field: value})


def test_repr_shows_per_layer_density():
    sparsity = Sparsity(small_net(), None, SparsityConfig(density=0.3), 10)
    lines = repr(sparsity).splitlines()
    assert "method=rigl" in lines[0] and f"density={sparsity.total_row()['density']:.4f}" in lines[0]
    rows = sparsity.layer_stats() + [sparsity.total_row()]
    assert len(lines) == 1 + len(rows) == 1 + 5 + 1  # header, one line per masked layer, total
    assert len({r["density"] for r in rows}) > 2  # ERK: the layers' densities differ
    for line, row in zip(lines[1:], rows):
        assert line.split()[0] == row["name"]
        assert f"{row['density']:7.4f}  {row['active']:>11,} / {row['total']:,}" in line, line


def test_import_rigl_needs_only_torch():
    """`import rigl` must work where only torch is installed: block everything else we use."""
    blocked = ["typer", "rich", "fvcore", "torchvision", "models", "flops", "data", "runs", "terminal",
               "distributed", "commands", "sweep", "report", "bench"]
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import rigl\n"
            "rigl.Sparsity(rigl.nn.Linear(4, 4), None, rigl.SparsityConfig(), 10)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(rigl.__file__).parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def our_imports() -> dict[str, set[str]]:
    """Each module of the repository (tests aside) and the modules of ours it imports, anywhere."""
    import ast
    modules = {p.stem: p for p in REPO.glob("*.py") if not p.stem.startswith("test_")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = found & set(modules) - {name}
    return graph


def test_flops_is_a_leaf_nothing_rigl_uses_imports_it_and_there_is_no_circle():
    graph = our_imports()
    assert graph["flops"] == set() and graph["models"] == set() and graph["recipes"] == set()

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph[start])
    assert not [name for name in graph if reaches(name, name)]
    # Scripts that use rigl (teacher.py) may import it; nothing that rigl.py itself uses may.
    assert not [name for name in graph if reaches("rigl", name) and "rigl" in graph[name]]


def test_the_command_line_loads_rigl_once():
    """`python rigl.py ...` runs rigl.py as __main__; no module may import it a second time as `rigl`."""
    result = subprocess.run([sys.executable, "-X", "importtime", "rigl.py", "flops", "--density", "0.1", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "commands" in imported and "rigl" not in imported


# --- rigl.py: the training loop and `python rigl.py train` ----------------------------------------


SMOKE = ["--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
         "--batch-size", "64", "--update-interval", "4"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    result = cli("train", *SMOKE, "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def test_cli_run_writes_config_metrics_summary_and_checkpoint(smoke_run):
    out, stdout = smoke_run
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["model"] == "wrn-10-1" and config["train"]["lr"] == 0.1  # recipe filled in
    assert config["sparsity"]["method"] == "rigl" and config["sparsity"]["density"] == 0.1
    assert {"torch", "git_commit"} <= set(config)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    keys = ("epoch", "step", "lr", "train_loss", "val_acc", "test_acc", "drop_fraction", "regrown", "elapsed")
    assert all(tuple(m) == keys for m in metrics)  # the fixed keys of README "Metrics", in order
    assert metrics[-1]["step"] == 16 and metrics[0]["regrown"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"final_val_acc", "final_test_acc", "best_val_acc", "wall_time", "steps", "layers"} <= set(summary)
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    allocation = rigl.initial_densities(shapes_of(build_model("wrn-10-1", 10)), SparsityConfig(density=0.1))
    assert [(layer["name"], layer["active"]) for layer in summary["layers"]] == [
        (name, rigl.active_count(d, layer["total"])) for (name, d), layer in zip(allocation.items(), summary["layers"])]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 16
    # FLOPs: 16 steps of 64 images, T_end = 12, RigL updates (a dense gradient) at steps 4 and 8.
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    expected = 64 * (14 * 3 * f_sparse + 2 * (2 * f_sparse + f_dense))
    assert summary["train_flops"] == pytest.approx(expected, rel=1e-9)
    assert summary["train_flops_ratio"] == pytest.approx(expected / (3 * f_dense * 512 * 2), rel=1e-9)
    assert "masked layers" in stdout and "epoch    2" in stdout


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # step 1 is a mask update
def test_training_with_accumulation_counts_optimizer_steps(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=512, val_size=0, epochs=1,
                                               batch_size=64, accumulate=3))
    summary = rigl.start_run(cfg, SparsityConfig(update_interval=1), tmp_path / "run", resume=False,
                             console=rich_console())
    assert summary["steps"] == 3  # 8 micro-batches of 64: steps after 3, 6 and the last 2
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    # T_end = int(0.75 · 3) = 2 and updates need t < T_end, so only step 1 pays a dense gradient;
    # every image is counted once, in the step its micro-batch belongs to.
    assert summary["train_flops"] == pytest.approx(
        192 * (2 * f_sparse + f_dense) + 192 * 3 * f_sparse + 128 * 3 * f_sparse, rel=1e-9)


def test_accumulation_through_the_training_loop_matches_one_big_batch(tmp_path, monkeypatch):
    """--accumulate 4 with batches of 32 takes the steps, grows the connections and reaches the
    weights (to float tolerance) of batches of 128, through rigl.train itself: a model without
    batch norm or dropout, and augmentation off, so that only the split of the batch differs."""
    def no_batch_norm(name, num_classes, width_scale=1.0):
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 16 * 16, num_classes))
    monkeypatch.setattr(models, "build_model", no_batch_norm)

    def trained(batch_size, accumulate):
        cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=512, val_size=0, epochs=2,
                                                   batch_size=batch_size, accumulate=accumulate))
        run = rigl.build_run(cfg, SparsityConfig(density=0.2, update_interval=2, dense_layers=()))
        run.data.augment = lambda images, generator: images
        run.data.test = tuple(t[:64] for t in run.data.test)
        (tmp_path / f"{batch_size}").mkdir()
        return run, rigl.train(run, tmp_path / f"{batch_size}", rich_console())
    (small, small_summary), (big, big_summary) = trained(32, 4), trained(128, 1)
    assert small_summary["steps"] == big_summary["steps"] == 8
    assert [m["regrown"] for m in small.history] == [m["regrown"] for m in big.history] != [0, 0]
    for name, mask in big.sparsity.masks.items():
        assert torch.equal(small.sparsity.masks[name], mask), name
    for name, weight in big.model.state_dict().items():
        assert torch.allclose(small.model.state_dict()[name], weight, rtol=1e-4, atol=1e-6), name
    assert [m["train_loss"] for m in small.history] == pytest.approx([m["train_loss"] for m in big.history])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_train_on_cpu(tmp_path, precision):
    cfg = TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=1, batch_size=64,
                           precision=precision)
    run = rigl.build_run(resolve_recipe(cfg), SparsityConfig(update_interval=2))
    run.data.test = tuple(t[:256] for t in run.data.test)
    summary = rigl.train(run, tmp_path, rich_console())
    assert summary["steps"] == 4 and run.scaler.is_enabled() == (precision == "fp16")
    assert run.sparsity.last_update["step"] == 2  # the update at t = 2 < T_end = 3 happened
    for name, mask in run.sparsity.masks.items():
        assert torch.all(run.sparsity.weights[name][~mask] == 0)


def test_synthetic_data_is_learnable(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=2000, val_size=500, epochs=3,
                                               seed=1))
    summary = rigl.start_run(cfg, SparsityConfig(density=0.1, update_interval=10), tmp_path / "run",
                             resume=False, console=rich_console())
    assert summary["final_test_acc"] > 40  # chance is 10%, after 48 steps


def test_small_dense_matches_the_sparse_parameter_count():
    for density, distribution in [(0.1, "erk"), (0.2, "uniform")]:
        cfg = SparsityConfig(method="small-dense", density=density, distribution=distribution)
        full = build_model("wrn-22-2", 10)
        sparse = Sparsity(full, None, SparsityConfig(density=density, distribution=distribution), 10)
        target = sum(r["active"] for r in sparse.layer_stats())
        small = build_model("wrn-22-2", 10, width_scale=rigl.small_dense_width("wrn-22-2", 10, cfg))
        count = sum(w.numel() for w in rigl.masked_weights(small).values())
        assert abs(count - target) / target < 0.02
        assert Sparsity(small, None, cfg, 10).masks == {}  # trained dense


def test_flops_and_train_describe_the_same_small_dense_network(tmp_path):
    """One definition of Small-Dense: `flops --method small-dense` counts the network `train` builds."""
    # wrn-22-2 at d = 0.1: a width of √d = 0.316 (RR's) would build other channel counts than ours
    result = cli("flops", "--method", "small-dense", "--model", "wrn-22-2", "--dataset", "synthetic",
                 "--density", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    counted = [(r["name"], r["shape"]) for r in json.loads(result.stdout)["layers"]]
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-22-2", train_subset=64,
                                               val_size=0, epochs=1))
    trained = rigl.build_run(cfg, SparsityConfig(method="small-dense", density=0.1)).sparsity.weights
    assert counted == [(name, list(w.shape)) for name, w in trained.items()]
    assert counted != [(n, list(s)) for n, s in shapes_of(build_model("wrn-22-2", 10)).items()]  # narrower


def test_lottery_retrains_the_pruning_masks_from_the_same_initialisation(tmp_path):
    prune_cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0,
                                                     epochs=2, batch_size=64))
    rigl.start_run(prune_cfg, SparsityConfig(method="pruning", density=0.3, update_interval=2),
                   tmp_path / "pruning", resume=False, console=rich_console())
    final = torch.load(tmp_path / "pruning" / "checkpoint.pt", weights_only=True)["sparsity"]["masks"]
    init = torch.load(tmp_path / "pruning" / "init.pt", weights_only=True)
    ticket_cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0,
                                                      epochs=1, seed=5, mask_from=str(tmp_path / "pruning")))
    run = rigl.build_run(ticket_cfg, SparsityConfig(method="lottery", density=0.3))
    assert run.sparsity.masks.keys() == final.keys()
    for name, mask in final.items():
        assert torch.equal(run.sparsity.masks[name], mask)
        assert torch.equal(run.sparsity.weights[name].detach(), init[name] * mask)
    active = sum(int(m.sum()) for m in final.values())
    assert active == round(0.3 * sum(m.numel() for m in final.values()))
    with pytest.raises(ValueError, match="method lottery needs --mask-from"):
        rigl.build_run(replace(ticket_cfg, mask_from=None), SparsityConfig(method="lottery"))


def test_kill_and_resume_ends_bit_identical(tmp_path):
    args = ["train", *SMOKE, "--epochs", "3", "--method", "set"]
    straight = cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "rigl.py", *args, "--out", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_first_epoch(process, killed)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_done = len(read_jsonl(killed / "metrics.jsonl"))
    assert epochs_done < 3, "the kill came too late to test anything"
    resumed = cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {killed} at epoch {epochs_done}" in resumed.stdout.replace("\n", "")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name
    drop_time = [lambda m: {k: v for k, v in m.items() if k != "elapsed"}][0]
    assert [drop_time(m) for m in read_jsonl(tmp_path / "straight" / "metrics.jsonl")] == \
           [drop_time(m) for m in read_jsonl(killed / "metrics.jsonl")]


def test_resume_with_another_configuration_is_refused(smoke_run):
    out, _ = smoke_run
    result = cli("train", *SMOKE, "--epochs", "2", "--lr", "0.05", "--density", "0.2",
                 "--out", str(out), "--resume")
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "refusing to resume" in message and "lr (run has 0.1, asked for 0.05)" in message
    assert "density (run has 0.1, asked for 0.2)" in message and "Traceback" not in result.stderr


def test_fresh_run_into_a_used_directory_is_refused(smoke_run):
    out, _ = smoke_run
    result = cli("train", *SMOKE, "--epochs", "2", "--out", str(out))
    assert result.returncode == 2 and "pass --resume" in " ".join(result.stdout.split())


def test_offline_without_data_says_how_to_provide_it(tmp_path):
    result = cli("train", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "could not be downloaded" in message and "cifar-10-batches-py" in message
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["--density", "1.5"], "density must satisfy 0 < density <= 1"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--drop-fraction", "2"], "--drop-fraction must satisfy 0 <= drop_fraction <= 1"),
    (["--label-smoothing", "2"], "--label-smoothing must satisfy"),
    (["--momentum", "1.5"], "--momentum must satisfy"),
    (["--seed", str(10**23)], "--seed must be an integer >= 0"),
    (["--device", "foo"], "--device foo: not a device"),
    (["--epochs", "1", "--multiplier", "0.1"], "rounds to no epoch at all"),
    (["--method", "magic"], "magic"),
    (["--update-interval", "many"], "Invalid value for '--update-interval'"),
])
def test_bad_option_values_are_rejected_with_a_message(tmp_path, args, message):
    result = cli("train", *SMOKE, *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert message in " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in result.stdout + result.stderr


def test_small_dense_flops_are_counted_against_the_full_width_network(tmp_path):
    """Small-Dense is dense but narrower: its FLOPs are a fraction of the full-width model's, the
    same fraction `python rigl.py flops --method small-dense` reports."""
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-22-2", train_subset=64, val_size=0,
                                               epochs=1, batch_size=64))
    run = rigl.build_run(cfg, SparsityConfig(method="small-dense", density=0.1))
    counted = commands.method_flops(rigl, "wrn-22-2", "synthetic", SparsityConfig(method="small-dense", density=0.1), 1.0)
    assert run.f_sparse / run.f_dense == pytest.approx(counted["inference_flops_ratio"])
    assert 0.09 < run.f_sparse / run.f_dense < 0.11


def test_micro_batches_in_step():
    assert [rigl.micro_batches_in_step(i, 3, 8) for i in range(8)] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert [rigl.micro_batches_in_step(i, 10, 4) for i in range(4)] == [4, 4, 4, 4]
    assert [rigl.micro_batches_in_step(i, 1, 3) for i in range(3)] == [1, 1, 1]


def test_accumulating_more_micro_batches_than_an_epoch_has_reports_their_mean_loss(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=1,
                                               batch_size=64, accumulate=10))
    summary = rigl.start_run(cfg, SparsityConfig(), tmp_path / "run", resume=False, console=rich_console())
    loss = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["train_loss"]
    assert summary["steps"] == 1 and 2.0 < loss < 2.6  # the mean over 4 micro-batches (chance: ln 10 = 2.30)


def test_a_diverging_run_stops_at_its_step_and_writes_strict_json(tmp_path):
    result = cli("train", *SMOKE, "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "diverged at step 2:" in result.stdout and "no epoch was saved" in " ".join(result.stdout.split())
    [record] = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
                for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["train_loss"] is None and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_ctrl_c_before_the_first_epoch_does_not_claim_a_saved_epoch(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "rigl.py", "train", *SMOKE, "--train-subset", "4096",
                                "--epochs", "1", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "init.pt").exists():  # the run has started, no epoch has finished
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130 and "nothing to resume" in output and "is saved" not in output


def test_no_mask_update_before_t_end_is_warned_about(caplog):
    with caplog.at_level("WARNING", logger="rigl"):
        Sparsity(small_net(), None, SparsityConfig(update_interval=100), total_steps=100)
    assert "no mask will change: the first update is at step ΔT = 100, not before T_end = 75" in caplog.text


# --- recipes.py: the report's recipes, the lr schedule and SGD -----------------------------------


def test_recipes_are_the_reports_and_the_papers():
    cifar10, cifar100 = resolve_recipe(TrainConfig()), resolve_recipe(TrainConfig(dataset="cifar100"))
    steps = [round(m * REPORT_STEPS) for m in cifar10.lr_milestones]
    assert steps == [30_000, 60_000] and cifar10.lr_gamma == 0.2 and cifar10.weight_decay == 5e-4
    assert [round(m * REPORT_STEPS) for m in cifar100.lr_milestones] == [20_000, 40_000, 60_000, 80_000]
    assert round(cifar100.warmup * REPORT_STEPS) == 1760 and cifar100.label_smoothing == 0.1
    imagenet = resolve_recipe(TrainConfig(dataset="imagenet", batch_size=1024))
    assert imagenet.lr == pytest.approx(0.4) and imagenet.lr_milestones == (0.3, 0.7, 0.9)
    assert resolve_recipe(TrainConfig(lr=0.05, epochs=3)).lr == 0.05  # a given value is kept
    # SparsityConfig's pruning start is RR's step 700 of the same run
    assert round(SparsityConfig().t_start * REPORT_STEPS) == 700


def test_lr_factor_warms_up_linearly_then_decays_by_gamma_at_each_milestone():
    factor = [recipes.lr_factor(step, 100, 0.1, (0.5, 0.8), 0.2) for step in range(100)]
    assert factor[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # 0.1, ..., 1.0
    assert factor[10:50] == [1.0] * 40
    assert factor[50:80] == pytest.approx([0.2] * 30) and factor[80:] == pytest.approx([0.04] * 20)


def test_sgd_is_nesterov_and_decays_only_weights_with_ndim_above_one():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    optimizer = recipes.make_optimizer(model, resolve_recipe(TrainConfig()))
    decayed, plain = optimizer.param_groups
    assert {p.ndim for p in decayed["params"]} == {4, 2} and decayed["weight_decay"] == 5e-4
    assert {p.ndim for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert decayed["nesterov"] and decayed["momentum"] == 0.9 and decayed["lr"] == 0.1


def test_train_config_names_the_field_it_refuses():
    for bad, message in [(dict(dataset="mnist"), "dataset must be one of cifar10 | cifar100"),
                         (dict(lr=0.0), "lr must satisfy lr > 0"), (dict(lr=math.inf), "lr must satisfy lr > 0"),
                         (dict(weight_decay=-1e-4), "weight_decay must satisfy weight_decay >= 0"),
                         (dict(warmup=1.5), "warmup must satisfy warmup >= 0 and <= 1"),
                         (dict(batch_size=0), "batch_size must be an integer >= 1"),
                         (dict(lr_milestones=(0.5, 1.0)), "lr_milestones must be fractions in (0, 1)")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**bad)


# --- runs.py: run directories --------------------------------------------------------------------


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path):
    import runs
    out = tmp_path / "run"
    with runs.locked(out):  # as if another process were training there
        result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
    assert result.returncode == 2 and "being written by another process" in " ".join(result.stdout.split())
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused one


def test_out_that_is_not_a_run_directory_is_refused_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me")
    for out, message in ((tmp_path / "mine", "holds files that are not a run"), (tmp_path / "a-file", "is a file")):
        result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
        assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout
    assert (tmp_path / "mine" / "notes.txt").read_text() == (tmp_path / "a-file").read_text() == "keep me"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "foreign"])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, finished_run, damage):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / "checkpoint.pt"
    contents = {"truncated": path.read_bytes()[:4000], "random": os.urandom(4000), "empty": b""}
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(contents[damage])
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out), "--resume")
    message = " ".join(result.stdout.split())
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert f"{path} is" in message and "not a checkpoint" in message, message


def test_a_malformed_config_json_is_named(tmp_path, finished_run):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "config.json").write_text("{ not json")
    result = cli("train", *SMOKE, "--epochs", "1", "--out", str(out), "--resume")
    assert result.returncode == 2 and f"{out / 'config.json'} is not readable JSON" in " ".join(result.stdout.split())


def test_a_full_disk_keeps_the_previous_file_and_says_so_in_one_line(tmp_path):
    import errno
    import runs
    import terminal
    path = tmp_path / "checkpoint.pt"
    path.write_text("the last good checkpoint")

    def full(tmp):
        tmp.write_text("half a checkpo")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    console = rich_console()
    with pytest.raises(SystemExit) as stop, terminal.user_errors(console):
        runs.atomic_write(path, full)
    assert stop.value.code == 2 and "No space left on device" in console.file.getvalue()
    assert path.read_text() == "the last good checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]



# --- models.py ------------------------------------------------------------------------------------


def conv_linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-adds of every Conv2d and Linear in one forward of batch 1."""
    macs = 0

    def conv_hook(m, inputs, out):
        nonlocal macs
        out_c, out_h, out_w = out.shape[1:]
        kh, kw = m.kernel_size
        macs += out_h * out_w * out_c * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inputs, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return macs


def test_wrn_22_2_weight_count_and_shortcuts():
    model = build_model("wrn-22-2", 10)
    assert conv_linear_weights(model) == 1_076_912
    shortcuts = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(shortcuts) == 3
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.bias is not None


def test_wrn_output_shape_and_depth():
    model = build_model("wrn-22-2", 10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # D = 6n + 4: 22 -> 3 blocks per group; 16 -> 2.
    assert [len(g) for g in (model.group1, model.group2, model.group3)] == [3, 3, 3]
    wrn16 = build_model("wrn-16-8", 100).eval()
    assert [len(g) for g in (wrn16.group1, wrn16.group2, wrn16.group3)] == [2, 2, 2]
    assert wrn16.fc.in_features == 512
    assert wrn16(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_wrn_28_10_builds():
    model = build_model("wrn-28-10", 10)
    assert model.fc.in_features == 640
    assert [len(g) for g in (model.group1, model.group2, model.group3)] == [4, 4, 4]


def test_wrn_width_1_has_identity_first_group():
    # With K = 1 the first group is 16 -> 16 at stride 1: no projection needed.
    model = build_model("wrn-10-1", 10)
    assert model.group1[0].shortcut is None
    assert model.group2[0].shortcut is not None


def test_wrn_dropout_default():
    drops = [m for m in build_model("wrn-22-2", 10).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 9 and all(d.p == 0.3 for d in drops)


def test_wrn_projection_uses_preactivated_input():
    block = WideBasicBlock(16, 32, 2, dropout=0.0).eval()
    with torch.no_grad():  # non-trivial BN so pre-activation differs from input
        block.bn1.running_mean.uniform_(-1, 1)
        block.bn1.bias.uniform_(-1, 1)
    seen = {}
    block.shortcut.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0]))
    x = torch.randn(2, 16, 8, 8)
    block(x)
    expected = torch.relu(block.bn1(x))
    assert torch.allclose(seen["inp"], expected)
    assert not torch.allclose(seen["inp"], x)


def test_wrn_identity_block_adds_raw_input():
    block = WideBasicBlock(8, 8, 1, dropout=0.0).eval()
    with torch.no_grad():
        block.conv2.weight.zero_()  # residual branch contributes nothing
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(block(x), x)


def test_wrn_init():
    model = build_model("wrn-22-2", 10)
    w = model.group3[0].conv1.weight  # 64 -> 128, 3x3: fan_out = 2 x fan_in
    fan_out = w.shape[0] * 9
    assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert torch.all(model.fc.bias == 0)


def test_wrn_22_2_macs():
    macs = count_macs(build_model("wrn-22-2", 10), (3, 32, 32))
    assert macs == 157_730_048
    assert abs(2 * macs / 3.15e8 - 1) < 0.01


def test_wrn_width_scale_half():
    full = build_model("wrn-22-2", 10)
    half = build_model("wrn-22-2", 10, width_scale=0.5)
    assert half.conv1.in_channels == 3 and half.conv1.out_channels == 8
    assert half.group1[0].conv1.out_channels == 16
    assert half.group2[0].conv1.out_channels == 32
    assert half.group3[0].shortcut.out_channels == 64
    assert half.fc.in_features == 64 and half.fc.out_features == 10
    # Hidden 3x3 convs quarter exactly; the stem and fc only halve
    # (their 3 input channels / 10 classes are not scaled).
    assert half.group3[1].conv1.weight.numel() * 4 == full.group3[1].conv1.weight.numel()
    expected = (full.conv1.weight.numel() // 2 + full.fc.weight.numel() // 2
                + (conv_linear_weights(full) - full.conv1.weight.numel()
                   - full.fc.weight.numel()) // 4)
    assert conv_linear_weights(half) == expected
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scale_rounds_and_floors_at_one():
    model = build_model("wrn-10-1", 10, width_scale=0.01)
    assert model.conv1.out_channels == 1 and model.fc.in_features == 1
    # 16 * 0.3 = 4.8 -> 5; 64 * 0.3 = 19.2 -> 19
    model = build_model("wrn-10-1", 10, width_scale=0.3)
    assert model.conv1.out_channels == 5 and model.fc.in_features == 19


def test_resnet50_cifar_shape_and_stem():
    model = build_model("resnet50-cifar", 100).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [3, 4, 6, 3]


def test_resnet50_v15_stride_on_3x3():
    model = build_model("resnet50-cifar", 10)
    for stage in (model.layer2, model.layer3, model.layer4):
        assert stage[0].conv1.stride == (1, 1)
        assert stage[0].conv2.stride == (2, 2)
        assert stage[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)


def test_resnet50_cifar_zero_init_last_bn():
    model = build_model("resnet50-cifar", 100)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for b in blocks:
        assert torch.all(b.bn3.weight == 0)
        assert torch.all(b.bn1.weight == 1) and torch.all(b.bn2.weight == 1)
    assert torch.all(model.bn1.weight == 1)


def test_resnet50_imagenet_no_zero_init():
    model = build_model("resnet50", 1000)
    assert all(torch.all(b.bn3.weight == 1)
               for b in model.modules() if isinstance(b, Bottleneck))


def test_resnet50_cifar_macs():
    macs = count_macs(build_model("resnet50-cifar", 100), (3, 32, 32))
    assert abs(2 * macs / 2.59e9 - 1) < 0.02


def test_resnet50_imagenet_param_count_and_forward():
    model = build_model("resnet50", 1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_resnet50_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = build_model("resnet50", 1000)
    theirs = torchvision.models.resnet50()
    assert ([(n, p.shape) for n, p in ours.named_parameters()]
            == [(n, p.shape) for n, p in theirs.named_parameters()])
    # Same names and shapes, so torchvision state dicts load directly.
    ours.load_state_dict(theirs.state_dict())


def test_resnet50_width_scale():
    model = build_model("resnet50-cifar", 10, width_scale=0.5)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 32
    assert model.layer1[0].conv1.out_channels == 32
    assert model.layer1[0].conv3.out_channels == 128
    assert model.layer4[0].conv2.out_channels == 256
    assert model.fc.in_features == 1024 and model.fc.out_features == 10
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["wrn-20-2", "wrn-4-2", "wrn-22-0", "wrn-22-2.5", "wrn-22"])
def test_invalid_wrn_names(name):
    with pytest.raises(ValueError, match=r"\(D - 4\) % 6 == 0") as info:
        build_model(name, 10)
    assert "resnet50-cifar" in str(info.value)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50-imagenet", ""])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="unknown model name") as info:
        build_model(name, 10)
    assert MODEL_NAMES_HELP in str(info.value)


def test_invalid_width_scale():
    with pytest.raises(ValueError, match="width_scale"):
        build_model("wrn-22-2", 10, width_scale=0.0)


# --- flops.py -------------------------------------------------------------------------------------


WRN_DENSE_MACS = 157_730_048  # fvcore's count for wrn-22-2, 10 classes, 32×32 (models.py)


@pytest.fixture(scope="module")
def wrn() -> nn.Module:
    torch.manual_seed(0)
    return models.build_model("wrn-22-2", num_classes=10)


@pytest.fixture(scope="module")
def wrn_macs(wrn) -> dict[str, int]:
    return flops.dense_layer_macs(wrn, list(rigl.masked_weights(wrn)), 32)


def densities_of(model: nn.Module, density: float, distribution: str) -> dict[str, float]:
    """Per-layer densities as rigl.Sparsity sets them (uniform keeps the first layer dense)."""
    return rigl.initial_densities(shapes_of(model), rigl.SparsityConfig(density=density, distribution=distribution))


def test_dense_wrn_22_2_forward_flops(wrn, wrn_macs):
    assert list(wrn_macs) == list(rigl.masked_weights(wrn))
    assert sum(wrn_macs.values()) == WRN_DENSE_MACS
    # Report: 3.15e8 forward FLOPs, multiplies and adds counted separately.
    paper = flops.PAPER_FLOPS_PER_MAC * sum(wrn_macs.values())
    assert paper == pytest.approx(3.15e8, rel=0.01)


def test_counts_conv_and_linear_only_and_restores_mode():
    """A hand count: BN, ReLU, pooling and the linear bias add nothing; the training mode survives."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10))
    net.train()
    names = list(rigl.masked_weights(net))
    macs = flops.dense_layer_macs(net, names, 8)
    # conv: C_out · C_in · k_h · k_w · H_out · W_out; linear: n_out · n_in
    assert macs == {"0.weight": 8 * 3 * 9 * 8 * 8, "3.weight": 4 * 8 * 1 * 4 * 4, "6.weight": 10 * 4}
    assert net.training
    net.eval()
    flops.dense_layer_macs(net, names, 8)
    assert not net.training


@pytest.mark.parametrize("distribution, density, ratio", [
    ("erk", 0.1, 0.17), ("erk", 0.2, 0.35), ("uniform", 0.1, 0.10), ("uniform", 0.2, 0.20)])
def test_inference_flops_ratio_of_table_2(wrn, wrn_macs, distribution, density, ratio):
    """ERK 0.174 / 0.352 and uniform 0.103 / 0.202 (first layer dense), rounded as in the report."""
    f_sparse = flops.sparse_forward_macs(wrn_macs, densities_of(wrn, density, distribution))
    assert round(f_sparse / sum(wrn_macs.values()), 2) == ratio


def test_sparse_forward_needs_every_layer(wrn_macs):
    with pytest.raises(ValueError, match="same layers"):
        flops.sparse_forward_macs(wrn_macs, {"fc.weight": 0.5})


def test_dense_resnet50_cifar_forward_flops():
    model = models.build_model("resnet50-cifar", num_classes=100)
    macs = flops.dense_layer_macs(model, list(rigl.masked_weights(model)), 32)
    paper = flops.PAPER_FLOPS_PER_MAC * sum(macs.values())
    assert paper == pytest.approx(2.59e9, rel=0.02)


def dense_gradient(method: str) -> str:
    return rigl.DENSE_GRADIENT.get(method, "never")


def test_train_step_formulas_by_hand():
    f_s, f_d = 2.0, 10.0
    assert flops.train_step_flops(f_d, f_d, dense_gradient("dense")) == 30.0  # dense: f_S = f_D
    for method in ("static", "set", "small-dense", "pruning", "lottery"):
        assert flops.train_step_flops(f_s, f_d, dense_gradient(method)) == 6.0
    for method in ("rigl", "rigl-sg", "rigl-sm"):
        # (3 ΔT f_S + 2 f_S + f_D) / (ΔT + 1) = (24 + 4 + 10) / 5
        assert flops.train_step_flops(f_s, f_d, dense_gradient(method), update_interval=4) == pytest.approx(7.6)
    assert flops.train_step_flops(f_s, f_d, dense_gradient("snfs")) == 14.0
    # Table 2's SNFS row: inference 0.49× gives training (2 · 0.49 + 1) / 3 = 0.66×
    assert round(flops.train_step_flops(0.49, 1.0, dense_gradient("snfs")) / 3, 2) == 0.66


def test_step_flops_by_hand():
    f_s, f_d = 2.0, 10.0
    assert flops.step_flops(f_s, f_d, dense_gradient_now=True) == 14.0
    assert flops.step_flops(f_s, f_d, dense_gradient_now=False) == 6.0


def test_unknown_dense_gradient_rule_names_the_allowed_ones():
    with pytest.raises(ValueError, match="never | update steps | every step"):
        flops.train_step_flops(1.0, 2.0, "sometimes")


def test_flop_report_by_hand():
    shapes = {"a.weight": (4, 3, 3, 3), "b.weight": (10, 4)}
    macs = {"a.weight": 1_000, "b.weight": 3_000}
    report = flops.flop_report(shapes, macs, {"a.weight": 1.0, "b.weight": 0.5}, "update steps",
                               update_interval=4, multiplier=2.0,
                               train_densities={"a.weight": 1.0, "b.weight": 0.75})
    assert report["dense_forward_flops"] == 8_000 and report["sparse_forward_flops"] == 5_000
    assert report["inference_flops_ratio"] == 5_000 / 8_000
    f_train = 2 * (1_000 + 0.75 * 3_000)  # the densities averaged over training
    assert report["train_step_flops"] == pytest.approx((3 * 4 * f_train + 2 * f_train + 8_000) / 5)
    assert report["train_flops_ratio"] == pytest.approx(2.0 * report["train_step_flops"] / 24_000)
    assert [r["params"] for r in report["layers"]] == [108, 40]
    assert report["layers"][1]["sparse_flops"] == 2 * 3_000 * 0.5
    small = flops.flop_report(shapes, macs, {"a.weight": 1.0, "b.weight": 1.0},
                              reference_macs={"a.weight": 4_000, "b.weight": 12_000})
    assert small["inference_flops_ratio"] == 0.25 and small["train_flops_ratio"] == 0.25


def test_flop_tally_rigl_run_and_resume():
    f_s, f_d, batch, steps, interval = 2.0, 10.0, 128, 1000, 100
    tally = flops.FlopTally()
    for t in range(1, steps + 1):
        if t == 500:  # resume from a checkpoint half-way through
            state, tally = tally.state_dict(), flops.FlopTally()
            tally.load_state_dict(state)
        tally.add(f_s, f_d, dense_gradient_now=t % interval == 0, batch_size=batch)
    # 10 update steps at 2 f_S + f_D, 990 at 3 f_S
    assert tally.total == batch * (10 * (2 * f_s + f_d) + 990 * 3 * f_s)
    assert tally.steps == steps


# --- commands.py: `python rigl.py flops`, Table 2's FLOP columns ----------------------------------


def method_flops(method, distribution="erk", density=0.2, multiplier=1.0, model="wrn-22-2"):
    cfg = SparsityConfig(method=method, density=density, distribution=distribution)
    return commands.method_flops(rigl, model, "cifar10", cfg, multiplier)


@pytest.mark.parametrize("method, distribution, multiplier, train, test", [
    ("static", "uniform", 1, 0.20, 0.20), ("set", "uniform", 1, 0.20, 0.20),
    ("rigl", "uniform", 1, 0.20, 0.20), ("static", "erk", 1, 0.35, 0.35),
    ("set", "erk", 1, 0.35, 0.35), ("rigl", "erk", 1, 0.35, 0.35),
    ("rigl", "uniform", 2, 0.41, 0.20)])
def test_table_2_ratios_at_density_0_2(method, distribution, multiplier, train, test):
    report = method_flops(method, distribution, multiplier=multiplier)
    assert round(report["train_flops_ratio"], 2) == train
    assert round(report["inference_flops_ratio"], 2) == test


def test_table_2_rigl_2x_erk():
    """Report: 0.70×, 0.35×. We get 2 × 0.3542 = 0.708: the report seems to double the rounded 0.35."""
    report = method_flops("rigl", multiplier=2)
    assert report["train_flops_ratio"] == pytest.approx(0.70, abs=0.01)
    assert round(report["inference_flops_ratio"], 2) == 0.35


def test_report_dense_and_its_rows(wrn):
    report = method_flops("dense")
    assert report["dense_forward_flops"] == 2 * WRN_DENSE_MACS
    assert report["train_step_flops"] == pytest.approx(9.45e8, rel=0.01)
    assert report["inference_flops_ratio"] == report["train_flops_ratio"] == 1.0
    rows = report["layers"]
    assert [r["name"] for r in rows] == list(rigl.masked_weights(wrn))
    assert rows[-1]["shape"] == [10, 128] and rows[-1]["params"] == 1280
    assert sum(r["dense_flops"] for r in rows) == report["dense_forward_flops"]
    assert report["convention"].startswith("paper: multiplies and adds counted separately")


def test_report_small_dense_uses_the_small_model():
    report = method_flops("small-dense", "erk")
    width = rigl.small_dense_width("wrn-22-2", 10, SparsityConfig(method="small-dense", density=0.2))
    small = models.build_model("wrn-22-2", num_classes=10, width_scale=width)
    small_macs = sum(flops.dense_layer_macs(small, list(rigl.masked_weights(small)), 32).values())
    assert report["sparse_forward_flops"] == 2 * small_macs
    assert [r["shape"] for r in report["layers"]] == [list(s) for s in shapes_of(small).values()]
    assert report["train_flops_ratio"] == pytest.approx(report["inference_flops_ratio"])
    assert round(report["inference_flops_ratio"], 2) == 0.20  # Table 2: 0.20×, 0.20×


def test_report_pruning_trains_on_the_mean_density_of_the_reports_schedule(wrn, wrn_macs):
    report = method_flops("pruning", "uniform")
    final = densities_of(wrn, 0.2, "uniform")
    mean = {n: rigl.mean_pruning_density(d, REPORT_STEPS, 700, 65_918) for n, d in final.items()}
    assert report["inference_flops_ratio"] == pytest.approx(0.2022, abs=1e-3)  # final masks
    assert report["train_flops_ratio"] == pytest.approx(
        flops.sparse_forward_macs(wrn_macs, mean) / sum(wrn_macs.values()))


def test_flops_command_json_reproduces_table_2():
    result = cli("flops", "--model", "wrn-22-2", "--density", "0.2", "--distribution", "erk", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"layers", "dense_forward_flops", "sparse_forward_flops", "inference_flops_ratio",
            "train_flops_ratio"} <= set(report)
    assert set(report["layers"][0]) >= {"name", "shape", "density", "params", "dense_flops", "sparse_flops"}
    assert report["dense_forward_flops"] == pytest.approx(3.15e8, rel=0.01)
    assert round(report["inference_flops_ratio"], 2) == 0.35 and round(report["train_flops_ratio"], 2) == 0.35
    table = {(r["method"], r["distribution"]): r for r in report["methods"]}
    for method in ("static", "set", "rigl"):
        for distribution, ratio in (("uniform", 0.20), ("erk", 0.35)):
            row = table[method, distribution]
            assert round(row["train_flops_ratio"], 2) == round(row["inference_flops_ratio"], 2) == ratio


def test_flops_command_states_the_convention():
    result = cli("flops", "--density", "0.1", "--method", "snfs")
    assert result.returncode == 0, result.stderr
    assert "multiplies and adds counted separately" in result.stdout and "group3.2.conv2.weight" in result.stdout


# --- commands.py and sweep.py: `python rigl.py sweep` ---------------------------------------------


SWEEP_SMOKE = ["--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "512", "--val-size", "256",
               "--batch-size", "64", "--update-intervals", "4"]


def test_sweep_lists_its_cells_and_names_them_readably(tmp_path):
    result = cli("sweep", str(tmp_path), "--methods", "dense,rigl,pruning,lottery", "--densities", "0.1,0.2",
                 "--distributions", "erk,uniform", "--seeds", "0,1", "--dry-run", *SWEEP_SMOKE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 3 * 8  # dense once per seed; 2 densities × 2 distributions × 2 seeds each
    assert lines[0].endswith("pruning-erk-d0.1-x1.0-dt4-s0: new")  # pruning runs before its lottery
    assert any(line.endswith("dense-x1.0-dt4-s1: new") for line in lines)
    assert not any(tmp_path.iterdir())  # a dry run trains nothing
    bad = cli("sweep", str(tmp_path), "--methods", "rigl,lottery", "--dry-run", *SWEEP_SMOKE)
    assert bad.returncode == 2 and "add pruning to --methods" in bad.stdout


def test_sweep_skips_finished_cells_and_resumes_a_killed_one(tmp_path):
    args = [sys.executable, "rigl.py", "sweep", str(tmp_path), "--methods", "static,set", *SWEEP_SMOKE,
            "--epochs", "3"]
    first, second = tmp_path / "static-erk-d0.1-x1.0-dt4-s0", tmp_path / "set-erk-d0.1-x1.0-dt4-s0"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_first_epoch(process, second)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (first / "summary.json").exists() and not (second / "summary.json").exists()
    finished_first = (first / "summary.json").read_text()
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{first.name}: done" in again.stdout and f"{second.name}: resume" in again.stdout
    assert (first / "summary.json").read_text() == finished_first  # untouched
    assert len(read_jsonl(second / "metrics.jsonl")) == 3 and (second / "summary.json").exists()
    report_run = cli("report", str(tmp_path))
    assert report_run.returncode == 0, report_run.stderr
    assert "Static (ERK)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "figures" / "accuracy_vs_density.png").stat().st_size > 5000
    assert cli("report", str(tmp_path / "nothing-here")).returncode == 2


def test_a_sweep_refuses_cells_trained_with_other_settings(tmp_path):
    base = ["sweep", str(tmp_path), "--methods", "static", *SWEEP_SMOKE]
    first = cli(*base, "--epochs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    again = cli(*base, "--epochs", "2", "--lr", "0.05")
    message = " ".join(again.stdout.split())
    assert again.returncode == 2 and "static-erk-d0.1-x1.0-dt4-s0 holds a run with other settings" in message
    assert "epochs (run has 1, asked for 2)" in message and "lr (run has 0.1, asked for 0.05)" in message
    assert cli(*base, "--epochs", "1").returncode == 0  # the same settings: done, nothing to do


@pytest.mark.parametrize("args, message", [
    (["--densities", "abc"], "--densities takes comma-separated float values"),
    (["--methods", ""], "--methods needs at least one value"),
    (["--density", "0.2"], "sweep sets --density for each cell"),
])
def test_bad_sweep_grids_get_one_line(tmp_path, args, message):
    result = cli("sweep", str(tmp_path), "--dry-run", *args)
    assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout


# --- commands.py and bench.py: `python rigl.py bench` ---------------------------------------------


def test_bench_command_times_dense_and_sparse_side_by_side():
    result = cli("bench", "--models", "wrn-22-2", "--methods", "rigl,static", "--batch-size", "2",
                 "--update-interval", "2", "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["method"] for r in rows] == ["dense", "rigl", "static"]
    assert rows[0]["step_ratio"] == 1.0 and all(r["step_s"] > 0 for r in rows)
    assert rows[1]["update_s"] > 0 and rows[2]["update_s"] is None  # static never updates
    assert cli("bench", "--models", "vgg", "--json").returncode == 2


@pytest.mark.parametrize("args", [["--batch-size", "-1"], ["--repeats", "0"], ["--models", "vgg"], ["--methods", ""]])
def test_bad_bench_values_get_one_line(args):
    result = cli("bench", "--models", "wrn-22-2", *args)
    assert result.returncode == 2 and "error:" in result.stdout and "Traceback" not in result.stdout + result.stderr


# --- report.py ------------------------------------------------------------------------------------


FACTS = commands.report_facts(rigl)


LAYERS = {"conv1.weight": (16, 3, 3, 3), "group1.0.conv1.weight": (32, 16, 3, 3),
          "group2.0.conv1.weight": (64, 32, 3, 3), "group3.0.conv2.weight": (128, 128, 3, 3),
          "fc.weight": (10, 128)}


def fake_run(root, name, method, distribution, density, seed, test_acc, multiplier=1.0,
             drop_fraction=0.3, update_interval=100, flops=(0.35, 0.35), history=3,
             layers=LAYERS):
    """A finished run directory as report.py writes it: config.json, summary.json and, unless
    history is None, densities.jsonl with epochs 0..history (densities drift a little)."""
    out = root / name
    out.mkdir(parents=True)
    config = {"train": {"dataset": "cifar10", "model": "wrn-22-2", "epochs": 250,
                        "multiplier": multiplier, "seed": seed},
              "sparsity": {"method": method, "density": density, "distribution": distribution,
                           "drop_fraction": drop_fraction, "update_interval": update_interval},
              "torch": "2.x", "git_commit": None}
    (out / "config.json").write_text(json.dumps(config))
    final = {n: min(1.0, density * (1 + i / 4)) for i, n in enumerate(layers)}
    summary = {"final_val_acc": None, "final_test_acc": test_acc, "best_val_acc": None,
               "epochs": 250, "steps": 87_891, "wall_time": 1.0, "density": density,
               "layers": [{"name": n, "shape": list(s), "density": final[n], "active": 0, "total": 1}
                          for n, s in layers.items()],
               "train_flops_ratio": flops[0], "inference_flops_ratio": flops[1]}
    (out / "summary.json").write_text(json.dumps(summary))
    if history is not None:
        lines = [json.dumps({"epoch": e, "densities": {n: d * (1 + 0.1 * e * (-1) ** i)
                                                       for i, (n, d) in enumerate(final.items())}})
                 for e in range(history + 1)]
        (out / "densities.jsonl").write_text("\n".join(lines) + "\n")
    return out


def unfinished_run(root, name):
    out = root / name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"train": {}, "sparsity": {"method": "rigl"}}))
    (out / "checkpoint.pt").write_bytes(b"placeholder")
    return out


def sweep(root):
    """RigL (ERK and uniform) at d = 0.1 and 0.2 and Static at 0.1 over seeds, dense, one seed of
    Small-Dense and of RigL-SG, and one unfinished run.
    RigL (ERK) at d = 0.1 has accuracies 92.0, 92.5, 93.0: 92.5 ± 0.5."""
    for seed, acc in enumerate([92.0, 92.5, 93.0]):
        fake_run(root, f"rigl-erk-d0.1-s{seed}", "rigl", "erk", 0.1, seed, acc)
        fake_run(root, f"rigl-erk-d0.2-s{seed}", "rigl", "erk", 0.2, seed, acc + 0.6)
        fake_run(root, f"rigl-uniform-d0.1-s{seed}", "rigl", "uniform", 0.1, seed, acc - 0.8,
                 flops=(0.2, 0.2))
        fake_run(root, f"static-d0.1-s{seed}", "static", "uniform", 0.1, seed, acc - 3.4, flops=(0.2, 0.2))
        fake_run(root, f"dense-s{seed}", "dense", "erk", 0.1, seed, acc + 0.9, flops=(1.0, 1.0))
    # Only two seeds of RigL uniform at d = 0.2: the row's seeds column reads "2-3".
    for seed in (0, 1):
        fake_run(root, f"rigl-uniform-d0.2-s{seed}", "rigl", "uniform", 0.2, seed, 92.6, flops=(0.3, 0.3))
    fake_run(root, "small-dense-d0.1-s0", "small-dense", "erk", 0.1, 0, 89.0, flops=(0.1, 0.1))
    fake_run(root, "nested/rigl-sg-erk-d0.1-s0", "rigl-sg", "erk", 0.1, 0, 92.3, flops=(0.4, 0.36))
    unfinished_run(root, "rigl-erk-d0.05-s0")
    return root


def group_of(groups, **keys):
    [group] = [g for g in groups if all(g[k] == v for k, v in keys.items())]
    return group


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5_000, path


def test_aggregate_mean_sample_std_and_seeds(tmp_path):
    runs = report.collect_runs(sweep(tmp_path), FACTS)
    assert len(runs) == 19                      # the unfinished run is not one of them
    assert not any("d0.05" in r["path"] for r in runs)
    groups = report.aggregate(runs)
    rigl_erk = group_of(groups, method="rigl", distribution="erk", density=0.1)
    assert rigl_erk["n"] == 3 and rigl_erk["seeds"] == [0, 1, 2]
    assert rigl_erk["test_mean"] == pytest.approx(92.5)
    assert rigl_erk["test_std"] == pytest.approx(0.5)       # sample std (ddof = 1), not 0.408
    assert group_of(groups, method="rigl", distribution="uniform", density=0.2)["n"] == 2
    assert group_of(groups, method="rigl-sg")["test_std"] == 0.0   # one seed: no spread
    # Dense is grouped at d = 1 with no distribution, whatever its config said.
    dense = group_of(groups, method="dense")
    assert (dense["density"], dense["distribution"], dense["n"]) == (1.0, "-", 3)
    assert group_of(groups, method="small-dense")["distribution"] == "-"  # no masks to distribute


def test_grouping_separates_multiplier_and_alpha_interval(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, f"a-{seed}", "rigl", "erk", 0.1, seed, 92.0)
        fake_run(tmp_path, f"b-{seed}", "rigl", "erk", 0.1, seed, 93.0, multiplier=2.0)
        fake_run(tmp_path, f"c-{seed}", "rigl", "erk", 0.1, seed, 91.0, drop_fraction=0.5)
        fake_run(tmp_path, f"d-{seed}", "rigl", "erk", 0.1, seed, 90.0, update_interval=200)
    groups = report.aggregate(report.collect_runs(tmp_path, FACTS))
    assert [g["n"] for g in groups] == [2, 2, 2, 2]
    labels = {report.group_label(g) for g in groups}
    assert labels == {"RigL (ERK)", "RigL (ERK) α=0.5", "RigL (ERK) ΔT=200", "RigL 2× (ERK)"}
    assert group_of(groups, multiplier=2.0)["test_mean"] == pytest.approx(93.0)


def test_table_cells_markdown_and_csv(tmp_path):
    groups = report.aggregate(report.collect_runs(sweep(tmp_path), FACTS))
    header, rows = report.table_rows(groups)
    assert header == ["method", "d = 0.1", "d = 0.2", "d = 1", "seeds"]
    by_label = {row[0]: row for row in rows}
    assert by_label["RigL (ERK)"] == ["RigL (ERK)", "92.50 ± 0.50 (0.35×, 0.35×)",
                                      "93.10 ± 0.50 (0.35×, 0.35×)", "", "3"]
    assert by_label["Dense"][1:] == ["", "", "93.40 ± 0.50 (1.00×, 1.00×)", "3"]
    assert by_label["RigL"][-1] == "2-3"
    # The report's order: unmasked first, uniform before ERK, Static before SET before RigL.
    assert [row[0] for row in rows] == ["Dense", "Small-Dense", "Static", "RigL", "RigL (ERK)",
                                        "RigL-SG (ERK)"]
    md, csv_path = report.write_tables(header, rows, groups, tmp_path)
    lines = md.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Test accuracy (%) on cifar10 wrn-22-2: mean ± sample std")
    assert "| RigL (ERK) | 92.50 ± 0.50 (0.35×, 0.35×) | 93.10 ± 0.50 (0.35×, 0.35×) |  | 3 |" in lines
    with open(csv_path, newline="", encoding="utf-8") as f:
        parsed = list(csv.DictReader(f))
    assert len(parsed) == len(groups)
    row = group_of(parsed, method="rigl", distribution="erk", density="0.1")
    assert float(row["test_mean"]) == pytest.approx(92.5) and float(row["test_std"]) == pytest.approx(0.5)
    assert (int(row["n"]), int(row["update_interval"])) == (3, 100)
    assert float(row["train_flops_ratio"]) == pytest.approx(0.35)


def test_make_report_writes_and_prints_every_file(tmp_path):
    console = Console(file=io.StringIO(), width=300)
    result = report.make_report(sweep(tmp_path), console, FACTS)
    figures = tmp_path / "figures"
    expected = [figures / "accuracy_vs_density.png", figures / "accuracy_vs_flops.png",
                figures / "layer_densities.png",
                figures / "density_over_training_cifar10-wrn-22-2-rigl-sg-erk-d0.1-x1-a0.3-dt100.png"]
    assert result["figures"] == expected
    assert result["tables"] == [tmp_path / "report.md", tmp_path / "report.csv"]
    printed = console.file.getvalue()
    for path in expected + result["tables"]:
        assert f"wrote {path}" in printed
    for path in expected:
        assert_png(path)
    assert "skipped 1 unfinished run" in printed and "rigl-erk-d0.05-s0" in printed
    assert "92.50 ± 0.50 (0.35×, 0.35×)" in printed        # the rich table
    assert (result["runs"], result["groups"]) == (19, 8)


def test_layer_densities_picks_rigl_erk_and_works_without_history(tmp_path):
    runs = report.collect_runs(sweep(tmp_path), FACTS)
    chosen = report.representative_run(runs)
    assert (chosen["method"], chosen["distribution"], chosen["density"], chosen["seed"]) == \
        ("rigl", "erk", 0.1, 0)
    old = report.run_record(fake_run(tmp_path, "old", "set", "erk", 0.1, 0, 91.0, history=None), FACTS)
    assert_png(report.plot_layer_densities(old, tmp_path / "old.png"))


def test_nothing_to_plot_returns_none(tmp_path):
    dense = report.aggregate([report.run_record(fake_run(tmp_path, "dense", "dense", "erk", 0.1, 0, 93.0), FACTS)])
    assert report.plot_accuracy_vs_density([], tmp_path / "a.png") is None
    assert report.plot_accuracy_vs_density(dense, tmp_path / "a.png") is None
    no_flops = [{**g, "train_flops_ratio": None} for g in dense]
    assert report.plot_accuracy_vs_flops(no_flops, tmp_path / "b.png") is None
    old = report.run_record(fake_run(tmp_path, "old", "rigl-sm", "erk", 0.1, 0, 92.0, history=None, layers={}),
                            FACTS)
    assert report.plot_density_over_training(old, tmp_path / "c.png") is None
    assert report.plot_layer_densities(old, tmp_path / "d.png") is None
    assert not list(tmp_path.glob("*.png"))


def test_no_finished_runs_is_an_error(tmp_path):
    unfinished_run(tmp_path, "running")
    with pytest.raises(ValueError, match=rf"no finished runs \(summary.json\) under {tmp_path}$"):
        report.make_report(tmp_path, Console(file=io.StringIO()), FACTS)


def test_report_refuses_to_pool_runs_that_differ_beyond_the_seed(tmp_path):
    a = fake_run(tmp_path, "a", "rigl", "erk", 0.1, 0, 92.0)
    fake_run(tmp_path, "b", "rigl", "erk", 0.1, 1, 92.5)
    config = json.loads((a / "config.json").read_text())
    config["train"]["epochs"] = 2
    (a / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"would share a row but differ in train.epochs 2 vs 250"):
        report.aggregate(report.collect_runs(tmp_path, FACTS))
    config["train"]["epochs"] = 250
    (a / "config.json").write_text(json.dumps(config))
    fake_run(tmp_path, "c", "rigl", "erk", 0.1, 1, 91.0)
    with pytest.raises(ValueError, match="seed 1 is run more than once in one row"):
        report.aggregate(report.collect_runs(tmp_path, FACTS))


def test_damaged_run_files_are_named(tmp_path):
    run = fake_run(tmp_path, "a", "rigl", "erk", 0.1, 0, 92.0)
    (run / "summary.json").write_text("{ not json")
    with pytest.raises(ValueError, match=f"{run / 'summary.json'} is not readable JSON"):
        report.collect_runs(tmp_path, FACTS)
    (run / "summary.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="is not a run's summary"):
        report.collect_runs(tmp_path, FACTS)


# --- data.py: ImageNet folders and the real CIFAR-10 ----------------------------------------------


def test_imagenet_without_its_folder_says_where_it_is_expected(tmp_path):
    result = cli("train", "--dataset", "imagenet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "ImageFolder tree" in message and "train/<class>" in message and "Traceback" not in result.stderr


def test_imagenet_folder_trains_resnet50(tmp_path):
    """A tiny ImageFolder tree stands in for ImageNet: the folder path, its DataLoader and the
    ImageNet ResNet-50 at 224×224 run end to end."""
    from PIL import Image
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(tmp_path / "data" / split / label / f"{i}.png")
    cfg = resolve_recipe(TrainConfig(dataset="imagenet", data_dir=str(tmp_path / "data"), epochs=1,
                                               batch_size=3, val_size=2, workers=0))
    summary = rigl.start_run(cfg, SparsityConfig(density=0.5, update_interval=2), tmp_path / "run",
                             resume=False, console=rich_console())
    assert summary["steps"] == 2 and summary["final_val_acc"] is not None
    assert summary["inference_flops"] / summary["inference_flops_ratio"] == pytest.approx(8.2e9, rel=0.01)


def image_tree(root, classes: dict, corrupt: str | None = None):
    """An ImageFolder tree: {"train": ["a", "b"], "val": [...]}, three small images per class."""
    from PIL import Image
    for split, names in classes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / split / name).mkdir()
            for i in range(3):
                Image.fromarray(torch.zeros(40, 40, 3, dtype=torch.uint8).numpy()).save(root / split / name / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("tree, message", [
    ({"train": ["a", "b"], "val": ["a", "c"]}, "train/ and val/ hold different classes"),
    ({"train": [], "val": []}, "ImageNet needs"),
])
def test_imagenet_folders_that_cannot_be_scored_are_refused(tmp_path, tree, message):
    root = image_tree(tmp_path / "data", tree)
    result = cli("train", "--dataset", "imagenet", "--data-dir", str(root), "--workers", "0",
                 "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_corrupt_image_is_named(tmp_path):
    root = image_tree(tmp_path / "data", {"train": ["a", "b"], "val": ["a", "b"]}, corrupt="train/a/1.png")
    result = cli("train", "--dataset", "imagenet", "--data-dir", str(root), "--epochs", "1", "--batch-size", "2",
                 "--val-size", "1", "--workers", "2", "--out", str(tmp_path / "run"))
    message = " ".join(result.stdout.split())
    assert result.returncode == 2 and "train/a/1.png is not a readable image" in message, message
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(not os.environ.get("RIGL_DATA_DIR"),
                    reason="set RIGL_DATA_DIR to a folder holding cifar-10-batches-py (.ci/run does)")
def test_a_damaged_cifar_file_is_named(tmp_path):
    import shutil
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(pathlib.Path(os.environ["RIGL_DATA_DIR"]) / "cifar-10-batches-py", folder)
    damaged = bytearray((folder / "data_batch_3").read_bytes())
    damaged[5000:5100] = bytes(100)
    (folder / "data_batch_3").write_bytes(bytes(damaged))
    result = cli("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "data_batch_3 is damaged" in " ".join(result.stdout.split())


@pytest.mark.skipif(not os.environ.get("RIGL_DATA_DIR"),
                    reason="set RIGL_DATA_DIR to a folder holding cifar-10-batches-py (.ci/run does)")
def test_rigl_on_real_cifar10_learns(tmp_path):
    """WRN-22-2, RigL, ERK, d = 0.1, 200 steps of batch 32 on the first 6,400 training images."""
    cfg = resolve_recipe(TrainConfig(data_dir=os.environ["RIGL_DATA_DIR"], train_subset=6400,
                                               val_size=0, epochs=1, batch_size=32))
    run = rigl.build_run(cfg, SparsityConfig(density=0.1))
    run.data.test = tuple(t[:2000] for t in run.data.test)  # a 2,000-image slice keeps CI fast
    summary = rigl.train(run, tmp_path, rich_console())
    assert summary["steps"] == 200 and abs(summary["density"] - 0.1) < 1e-4
    assert summary["final_test_acc"] > 20  # chance is 10%


# --- distributed.py: torchrun ---------------------------------------------------------------------


DDP_SMOKE = ["train", "--dataset", "synthetic", "--train-subset", "512", "--val-size", "128",
             "--batch-size", "64", "--update-interval", "2", "--device", "cpu"]


def torchrun(*args, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(29_500 + os.getpid() % 1000), "rigl.py", *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def test_the_ranks_fingerprint_covers_masks_and_weights(monkeypatch):
    """The fingerprint of check_ranks_agree changes with one mask bit (whose weight stays 0) and
    with one weight; ranks holding different ones are stopped."""
    import distributed
    gathered = []
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, digest: (gathered.append(digest), out.__setitem__(slice(None), [digest] * 2)))
    sparsity = Sparsity(small_net(), None, SparsityConfig(density=0.5), total_steps=100)
    name = next(iter(sparsity.masks))
    distributed.check_ranks_agree(sparsity, 1)
    sparsity.masks[name].view(-1)[torch.nonzero(~sparsity.masks[name].view(-1))[0]] = True
    distributed.check_ranks_agree(sparsity, 1)
    with torch.no_grad():
        sparsity.weights[name].view(-1)[0] += 1.0
    distributed.check_ranks_agree(sparsity, 1)
    assert len(set(gathered)) == 3
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, digest: out.__setitem__(slice(None), [digest, "another rank"]))
    with pytest.raises(RuntimeError, match="ranks disagree on masks or weights after epoch 1"):
        distributed.check_ranks_agree(sparsity, 1)


def test_torchrun_ranks_agree_on_masks_and_one_rank_writes(tmp_path):
    out = tmp_path / "ddp"
    process = torchrun(*DDP_SMOKE, "--epochs", "2", "--out", str(out))
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    # Five mask updates (t = 2, 4, ..., 10 < T_end = 12), and the ranks compare fingerprints of
    # their masks and weights after every epoch.
    assert "epoch 2: masks and weights identical on all 2 ranks" in output
    assert output.count("done: test acc") == 1  # rank 1 neither prints nor writes
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt", "config.json", "densities.jsonl",
                                                     "init.pt", "metrics.jsonl", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    single = Sparsity(build_model("wrn-10-1", 10), None, SparsityConfig(density=0.1), 16).layer_stats()
    assert [layer["active"] for layer in summary["layers"]] == [layer["active"] for layer in single]
    # The FLOP tally counts the global batch of 64, split 32 + 32 over the ranks.
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    assert summary["train_flops"] == pytest.approx(64 * (11 * 3 * f_sparse + 5 * (2 * f_sparse + f_dense)))


def test_torchrun_run_resumes_after_a_kill(tmp_path):
    out = tmp_path / "ddp"
    process = torchrun(*DDP_SMOKE, "--epochs", "3", "--out", str(out))
    wait_for_first_epoch(process, out)
    # torchrun's workers live in their own process groups: kill every process of this run.
    subprocess.run(["pkill", "-KILL", "-f", str(out)], check=False)
    process.communicate()
    done = len(read_jsonl(out / "metrics.jsonl"))
    assert done < 3, "the kill came too late to test anything"
    resumed = torchrun(*DDP_SMOKE, "--epochs", "3", "--out", str(out), "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert output.count(f"at epoch {done}, step {8 * done}") == 1
    assert "epoch 3: masks and weights identical on all 2 ranks" in output
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


# --- export.py and sparse_inference.py: helpers ---------------------------------------------------


def sparse_model(name: str, classes: int, distribution: str = "erk", density: float = 0.1, seed: int = 0):
    """A model, rigl's masks for it, and weights re-randomised afterwards so that the entries
    outside the masks are NOT zero (the exporter must apply the masks itself); BatchNorm
    statistics and biases made non-trivial too."""
    torch.manual_seed(seed)
    model = models.build_model(name, classes)
    config = rigl.SparsityConfig(method="static", density=density, distribution=distribution)
    masks = rigl.Sparsity(model, None, config, 10).masks
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0, 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(0, 0.1)
    return model.eval(), masks


def reference_masked(model, masks):
    """The masked network computed independently of export.masked_model."""
    reference = copy.deepcopy(model).eval()
    parameters = dict(reference.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)
    return reference


def write_run(root, method: str = "rigl", model_name: str = "wrn-10-1", dataset: str = "synthetic"):
    """A run directory as rigl.start_run and runs.save_epoch write it (only the keys export reads
    beside the structure): config.json and checkpoint.pt."""
    classes = {"synthetic": 10, "cifar10": 10}[dataset]
    torch.manual_seed(0)
    model = models.build_model(model_name, classes)
    sparsity = rigl.Sparsity(model, None, rigl.SparsityConfig(method=method, density=0.1), 10)
    config = {"train": asdict(TrainConfig(model=model_name, dataset=dataset)),
              "sparsity": asdict(sparsity.config), "torch": torch.__version__, "git_commit": None}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    torch.save({"model": model.state_dict(), "sparsity": sparsity.state_dict(), "epoch": 1}, root / "checkpoint.pt")
    return model, sparsity.masks


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_available() -> bool:
    return export.onnx_missing() is None


# --- export.py: bitmasks and the compact file -----------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5, 3, 3), (64, 17)])
def test_pack_bits_round_trip_and_numpy_layout(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3
    bits = export.pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == (mask.numel() + 7) // 8
    assert torch.equal(export.unpack_bits(bits, mask.shape), mask)
    np.testing.assert_array_equal(bits.numpy(), np.packbits(mask.flatten().numpy(), bitorder="little"))


@pytest.mark.parametrize("name, classes, size", [("wrn-22-2", 10, 32), ("resnet50", 1000, 64)])
def test_compact_round_trip_is_exact(tmp_path, name, classes, size):
    model, masks = sparse_model(name, classes)
    path = tmp_path / "model.compact.pt"
    arch = {"model": name, "num_classes": classes, "width_scale": 1.0, "input_size": size}
    export.save_compact(path, model, masks, arch)
    rebuilt = export.load_compact(path)
    reference = reference_masked(model, masks)
    assert not rebuilt.training
    for key, tensor in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), reference(x))
        assert torch.equal(export.masked_model(model, masks)(x), reference(x))
        assert not torch.equal(model(x), reference(x))  # the masks do matter here


def test_compact_values_are_in_mask_order():
    weight = torch.arange(12.0).view(3, 4)
    mask = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(weight)
    entry = export.compact_state(model, {"weight": mask})["sparse"]["weight"]
    assert entry["values"].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert entry["values"].dtype == torch.float32 and entry["shape"] == [3, 4]
    state, masks = export.expand_state(export.compact_state(model, {"weight": mask}))
    assert torch.equal(state["weight"], weight * mask) and torch.equal(masks["weight"], mask)


def test_fp16_values_are_smaller_and_close(tmp_path):
    model, masks = sparse_model("wrn-10-1", 10)
    arch = {"model": "wrn-10-1", "num_classes": 10, "width_scale": 1.0, "input_size": 32}
    full = export.save_compact(tmp_path / "a.pt", model, masks, arch)
    half = export.save_compact(tmp_path / "b.pt", model, masks, arch, fp16=True)
    assert half < full
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        difference = (export.load_compact(tmp_path / "b.pt")(x) - reference_masked(model, masks)(x)).abs().max()
    assert 0 < difference < 1e-2


def test_size_ratio_wrn_22_2_erk_d01(tmp_path):
    model, masks = sparse_model("wrn-22-2", 10)
    arch = {"model": "wrn-22-2", "num_classes": 10, "width_scale": 1.0, "input_size": 32}
    compact = export.save_compact(tmp_path / "model.compact.pt", model, masks, arch)
    ratio = compact / export.saved_bytes(model.state_dict())
    assert ratio <= 0.16, ratio


def test_load_compact_refuses_other_files(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(export.ExportError, match="is not a compact model file"):
        export.load_compact(tmp_path / "other.pt")


def test_mask_for_unknown_weight_is_refused():
    with pytest.raises(ValueError, match="names no weight of the model"):
        export.compact_state(torch.nn.Linear(2, 2), {"nope.weight": torch.ones(2, 2, dtype=torch.bool)})


# --- export.py: export_run on a run directory, python rigl.py export ------------------------------


def test_export_run_writes_exact_compact_file_and_onnx(tmp_path):
    run = tmp_path / "run"
    model, masks = write_run(run)
    result = export.export_run(run)
    assert result["max_abs_diff"] == 0.0
    assert result["compact_path"] == str(run / export.COMPACT_NAME) and (run / export.COMPACT_NAME).is_file()
    assert result["compact_bytes"] == (run / export.COMPACT_NAME).stat().st_size
    assert result["dense_bytes"] == export.saved_bytes(torch.load(run / "checkpoint.pt")["model"])
    assert result["size_ratio"] == result["compact_bytes"] / result["dense_bytes"] < 0.5
    rebuilt = export.load_compact(run / export.COMPACT_NAME)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), reference_masked(model, masks)(x))
    if onnx_available():
        assert (run / export.ONNX_NAME).is_file() and result["onnx_path"] == str(run / export.ONNX_NAME)
        try:
            import onnxruntime  # noqa: F401
            assert result["onnx_max_abs_diff"] < 1e-4
        except ImportError:
            assert result["onnx_max_abs_diff"] is None
    else:
        assert result["onnx_path"] is None and "pip install onnx" in result["note"]
    console = Console(file=io.StringIO(), width=200)
    export.print_export(result, console)
    assert export.COMPACT_NAME in console.file.getvalue()


def test_export_run_fp16(tmp_path):
    write_run(tmp_path / "run")
    full = export.export_run(tmp_path / "run")
    half = export.export_run(tmp_path / "run", fp16=True)
    assert half["compact_bytes"] < full["compact_bytes"] and 0 < half["max_abs_diff"] < 1e-2


@pytest.mark.parametrize("method", ["dense", "small-dense"])
def test_export_of_a_dense_run_is_refused_in_one_line(tmp_path, method):
    write_run(tmp_path / "run", method=method)
    with pytest.raises(ValueError) as error:
        export.export_run(tmp_path / "run")
    message = str(error.value)
    assert "has no masks to export: it trained a dense network" in message and "\n" not in message
    assert isinstance(error.value, export.ExportError)


def test_export_of_a_missing_or_incomplete_run_directory_is_refused_in_one_line(tmp_path):
    for path, detail in [(tmp_path / "absent", "it does not exist"), (tmp_path, "it has no config.json")]:
        with pytest.raises(ValueError, match="is not a run directory: " + detail) as error:
            export.export_run(path)
        assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="it has no checkpoint.pt"):
        export.export_run(tmp_path)
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not a run directory: cannot read") as error:
        export.export_run(tmp_path)
    assert "\n" not in str(error.value)


def test_new_modules_do_not_import_rigl():
    code = "import sys, export, sparse_inference; assert 'rigl' not in sys.modules, 'rigl imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- sparse_inference.py: sparse kernels where they pay -------------------------------------------


@pytest.mark.parametrize("name, classes, size", [("wrn-22-2", 10, 32), ("resnet50", 1000, 64)])
def test_every_sparse_kernel_matches_the_masked_layer(name, classes, size):
    model, masks = sparse_model(name, classes, "uniform")  # uniform: the classifier is masked too
    dense = reference_masked(model, masks)
    names = [n.removesuffix(".weight") for n in masks]
    shapes = sparse_inference.layer_inputs(dense, names, torch.zeros(2, 3, size, size))
    kernels = set()
    with torch.no_grad():
        for layer in names:
            module = dense.get_submodule(layer)
            for batch in (1, 2):
                x = torch.randn(batch, *shapes[layer][1:])
                for kernel, sparse in sparse_inference.sparse_candidates(module).items():
                    difference = sparse_inference.relative_difference(sparse(x), module(x))
                    assert difference <= 1e-5, (layer, kernel, batch, difference)
                    kernels.add(kernel)
    assert kernels == {"unfold", "kn2row", "1x1", "csr"}


@pytest.mark.parametrize("batch", [1, 3])
def test_sparsified_model_equals_masked_dense(batch):
    model, masks = sparse_model("wrn-22-2", 10, "uniform")
    x = torch.randn(batch, 3, 32, 32)
    sparse, rows = sparse_inference.sparsify_for_inference(model, masks, x, threads=1, repeats=1,
                                                           min_speedup=0.0)
    assert all(r["chosen"] for r in rows) and len(rows) == len(masks)
    assert {type(m).__name__ for m in sparse.modules()} >= {"SparseConv2d", "SparseLinear"}
    y = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        assert sparse_inference.relative_difference(sparse(y), reference_masked(model, masks)(y)) <= 1e-5
    assert set(rows[0]) >= {"name", "shape", "density", "dense_ms", "sparse_ms", "speedup", "chosen"}


def test_sparsify_keeps_dense_layers_where_sparse_is_slower():
    model, masks = sparse_model("wrn-10-1", 10)
    x = torch.randn(1, 3, 32, 32)
    sparse, rows = sparse_inference.sparsify_for_inference(model, masks, x, repeats=1, min_speedup=1e9)
    assert not any(r["chosen"] for r in rows)
    assert not any(isinstance(m, (sparse_inference.SparseConv2d, sparse_inference.SparseLinear))
                   for m in sparse.modules())


@pytest.mark.parametrize("whole_network_wins", [False, True])
def test_layers_that_win_alone_are_kept_only_if_the_network_wins_too(monkeypatch, whole_network_wins):
    """Timings are faked: every sparse kernel wins its layer by 10×; the whole sparse network then
    wins or loses. Losing as a whole returns the dense network with no layer chosen."""
    def fake_median_ms(work, repeats, warmup=2):
        if "dense network" in work:
            return {"dense network": 10.0, "sparse network": 5.0 if whole_network_wins else 12.0}
        return {name: 10.0 if name == "dense" else 1.0 for name in work}
    monkeypatch.setattr(sparse_inference, "median_ms", fake_median_ms)
    model, masks = sparse_model("wrn-10-1", 10)
    sparse, rows = sparse_inference.sparsify_for_inference(model, masks, torch.randn(1, 3, 32, 32), repeats=1)
    swapped = [m for m in sparse.modules() if isinstance(m, (sparse_inference.SparseConv2d, sparse_inference.SparseLinear))]
    assert all(r["chosen"] == whole_network_wins for r in rows)
    assert len(swapped) == (len(rows) if whole_network_wins else 0)
    [row] = [r for r in sparse_inference.compare_inference([("wrn-10-1", model, masks, 32)], [1], repeats=1)
             if r["variant"] == "per-layer sparse"]
    assert row["sparse_layers"] == (f"{len(rows)}/{len(rows)}" if whole_network_wins else
                                    f"0/{len(rows)} ({len(rows)} faster alone, not as a network)")


def test_compare_inference_rows_and_table():
    model, masks = sparse_model("wrn-10-1", 10)
    rows = sparse_inference.compare_inference([("wrn-10-1 erk", model, masks, 32)], [1], threads=1, repeats=1)
    variants = [r["variant"] for r in rows]
    assert variants[:3] == ["dense eager", "channels_last", "per-layer sparse"]
    assert ("onnxruntime" in variants) == (onnx_available() and onnxruntime_available())
    assert rows[0]["ratio"] == 1.0 and all(r["max_rel_diff"] <= 1e-5 for r in rows)
    console = Console(file=io.StringIO(), width=200)
    sparse_inference.print_inference(rows, 1, console, layers=True)
    assert "per-layer sparse" in console.file.getvalue() and "group1.0.conv1" in console.file.getvalue()


def test_bench_inference_uses_the_given_masks():
    calls = []

    def make_masks(model, distribution):
        calls.append(distribution)
        config = rigl.SparsityConfig(method="static", density=0.1, distribution=distribution)
        return rigl.Sparsity(model, None, config, 10).masks
    rows = sparse_inference.bench_inference(make_masks, threads=1, repeats=1, names=("wrn-22-2",),
                                            distributions=("uniform",))
    assert calls == ["uniform"]
    assert {(r["model"], r["batch"]) for r in rows} == {("wrn-22-2 uniform", 1), ("wrn-22-2 uniform", 16)}


def test_onnx_with_sparse_initializers_is_smaller_and_equal(tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    write_run(tmp_path / "run", model_name="wrn-16-2")
    dense = export.export_run(tmp_path / "run")
    sparse = export.export_run(tmp_path / "run", onnx_sparse=True)
    assert sparse["onnx_bytes"] < 0.5 * dense["onnx_bytes"] and sparse["onnx_max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(sparse["onnx_path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = export.load_compact(sparse["compact_path"])(x)
    assert np.abs(session.run(["logits"], {"images": x.numpy()})[0] - expected.numpy()).max() < 1e-4


def test_bench_inference_refuses_unknown_models_and_threads():
    with pytest.raises(ValueError, match="bench --inference models are wrn-22-2, resnet50, got 'vgg'"):
        sparse_inference.bench_inference(lambda m, d: {}, names=("vgg",))
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        sparse_inference.bench_inference(lambda m, d: {}, threads=0)


def test_export_of_a_checkpoint_that_does_not_fit_its_config_is_refused_in_one_line(tmp_path):
    write_run(tmp_path / "run", model_name="wrn-10-1")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["train"]["model"] = "wrn-16-1"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit wrn-16-1 of config.json: .* missing") as error:
        export.export_run(tmp_path / "run")
    assert "\n" not in str(error.value)


def test_export_command_json(finished_run, tmp_path):
    import shutil
    shutil.copytree(finished_run, tmp_path / "run")
    result = cli("export", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] == 0.0 and report["size_ratio"] < 0.2
    missing = cli("export", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "is not a run directory" in missing.stdout


# --- teacher.py: why RigL exists, in a few seconds ----------------------------------------------


def test_rigl_finds_the_teachers_inputs_that_a_random_mask_misses():
    """The README's demonstration, shorter: on the sparse linear teacher RigL beats a static mask
    by far more than seed noise, and SET, which grows at random, lands between them."""
    import statistics
    import teacher
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = {r["method"]: r["accuracies"] for r in teacher.compare(["static", "set", "rigl"], [0, 1, 2], 600, 0.02)}
    finally:
        torch.set_num_threads(threads)
    assert min(rows["rigl"]) > max(rows["static"]) + 30  # chance is 25%
    assert max(rows["set"]) < min(rows["rigl"]) - 20
    assert statistics.fmean(rows["set"]) > statistics.fmean(rows["static"])
