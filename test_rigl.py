"""The paper's claims about rigl.py, on CPU in seconds, with torch alone: `python -m pytest -q test_rigl.py`.

The harness's tests (training loop, command line, FLOPs, reports, export) are in tests/.
"""

import ast
import copy
from dataclasses import replace
import math
import pathlib
import sys

import pytest
import torch
from torch import nn

import rigl
from rigl import Sparsity, SparsityConfig

torch.set_num_threads(1)  # small tensors: on a loaded machine, more threads only wait for each other


# --- Helpers ------------------------------------------------------------------------------------


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


def train_steps(model, optimizer, sparsity, steps, batch=8):
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
    """The masked weights of WRN-22-2, the report's network (models.py needs torch alone)."""
    from models import build_model
    return shapes_of(build_model("wrn-22-2", num_classes=10))


def test_rigl_imports_only_torch_and_the_standard_library():
    """rigl.py is the leaf everything stands on: copied alone into a project, it must work."""
    tree = ast.parse(pathlib.Path(rigl.__file__).read_text())
    tree.body = [node for node in tree.body if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names) | {"torch"}, imported


# --- rigl.py: layer densities (uniform, ER, ERK) --------------------------------------------------


@pytest.mark.parametrize("distribution", ["erk", "er"])
@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_erdos_renyi_budget_and_shape_of_solution(distribution, density):
    shapes = wrn_shapes()
    cfg = SparsityConfig(density=density, distribution=distribution)
    densities = rigl.initial_densities(shapes, cfg, dense_layers=())
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
        return rigl.initial_densities(shapes, cfg, dense_layers=())
    assert densities("er", 0.5) == densities("er", 1.0)
    half = densities("erk", 0.5)
    assert half != densities("erk", 1.0)
    eps = {half[n] / rigl.erk_score(shapes[n]) ** 0.5 for n, d in half.items() if d < 1}
    assert max(eps) - min(eps) < 1e-9 * max(eps)  # d_l = ε · score_l^0.5


def test_an_erk_power_scale_that_underflows_every_score_is_refused():
    """A large power takes every ERK score to 0 in floating point: refused by name, not a division by zero."""
    cfg = SparsityConfig(density=0.1, erk_power_scale=200)
    with pytest.raises(ValueError, match="erk_power_scale 200 takes the ERK scores of the sparse layers out of"):
        rigl.initial_densities(wrn_shapes(), cfg, dense_layers=())


def test_pruning_without_a_pruning_step_is_refused():
    """Gradual pruning prunes in (t_start, T_end]: a schedule with no step there would train the
    dense network and call it pruned."""
    for config, total_steps in ((SparsityConfig(method="pruning", t_start=0.5, t_end=0.5), 100),
                                (SparsityConfig(method="pruning"), 1)):
        with pytest.raises(ValueError, match="pruning never prunes"):
            Sparsity(small_net(), None, config, total_steps)


@pytest.mark.parametrize("density, expected_shortcuts", [(0.2, 3), (0.1, 2)])
def test_erk_dense_layers_of_wrn_22_2_are_the_reference_ones(density, expected_shortcuts):
    """TF's get_sparsities_erdos_renyi on WRN-22-2: at d = 0.2 conv1, all three 1x1 shortcuts and the
    linear layer are dense; at d = 0.1 conv1, two of the shortcuts and the linear layer."""
    shapes = wrn_shapes()
    densities = rigl.initial_densities(shapes, SparsityConfig(density=density), dense_layers=())
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
    from models import build_model
    shapes = shapes_of(build_model("resnet50", 1000))
    ours = rigl.initial_densities(shapes, SparsityConfig(density=0.1))
    assert round(ours["conv1.weight"], 2) == 0.42
    authors = rigl.initial_densities(shapes, SparsityConfig(density=0.1, dense_layers=("conv1",)))
    assert authors["conv1.weight"] == 1.0
    rest = {n: math.prod(s) for n, s in shapes.items() if n != "conv1.weight"}
    active = sum(rigl.active_count(authors[n], count) for n, count in rest.items())
    assert abs(active - 0.1 * sum(rest.values())) <= len(rest)


def test_uniform_keeps_the_first_layer_dense_outside_the_budget():
    from models import build_model
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
    with pytest.raises(ValueError, match="dense_layers: 'nope' matches no masked weight; nearest: "):
        Sparsity(model, None, SparsityConfig(dense_layers=("nope",)), 100)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_layer_densities_give_named_layers_exact_counts_and_the_rest_the_distribution(distribution):
    """TF's custom_sparsity_map: each named layer holds round(d_l · n_l) active weights; the others
    are distributed at d among themselves, the named layers outside the budget (TF sparse_utils.py)."""
    model, named = small_net(), {"2.weight": 0.37, "10.weight": 1.0}
    cfg = SparsityConfig(density=0.2, distribution=distribution, layer_densities=named)
    sparsity = Sparsity(model, None, cfg, 100)
    counts = sparsity.active_counts()
    assert counts["2.weight"] == rigl.active_count(0.37, 8 * 16 * 9) == round(0.37 * 1152)
    assert "10.weight" not in sparsity.masks  # density 1: no mask
    shapes = shapes_of(model)
    rest = {n: s for n, s in shapes.items() if n not in named}
    expected = rigl.initial_densities(rest, SparsityConfig(density=0.2, distribution=distribution))
    for name, density in expected.items():
        assert sparsity.initial_densities[name] == density
        if density < 1:
            assert counts[name] == rigl.active_count(density, math.prod(shapes[name]))


def test_a_complete_layer_density_map_reproduces_any_allocation_exactly():
    """A finished run's final densities (active / total) give back its per-layer counts exactly,
    whatever the distribution: what --densities-from restarts from."""
    model = small_net()
    source = Sparsity(model, None, SparsityConfig(density=0.15, distribution="erk", seed=3), 100)
    restarted = Sparsity(small_net(), None, SparsityConfig(density=0.15, distribution="uniform", seed=4,
                                                           layer_densities=source.densities()), 100)
    assert restarted.active_counts() == source.active_counts()
    assert any(not torch.equal(restarted.masks[n], m) for n, m in source.masks.items())  # fresh masks


def test_layer_densities_refuse_unknown_names_bad_values_and_methods_without_masks():
    with pytest.raises(ValueError, match=r"layer_densities: '2\.weigth' is no masked weight; nearest: \['2\.weight'"):
        Sparsity(small_net(), None, SparsityConfig(layer_densities={"2.weigth": 0.5}), 100)
    with pytest.raises(ValueError, match=r"layer_densities\['2.weight'\] must satisfy 0 < density <= 1"):
        SparsityConfig(layer_densities={"2.weight": 0.0})
    with pytest.raises(ValueError, match="method pruning starts without masks"):
        SparsityConfig(method="pruning", layer_densities={"2.weight": 0.5})
    with pytest.raises(ValueError, match="layer_densities must map masked weight names"):
        SparsityConfig(layer_densities=[0.5])


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
        train_steps(model, optimizer, sparsity, 1)
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
        train_steps(model, optimizer, sparsity, 1)
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
    train_steps(model, optimizer, sparsity, 3)
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
    train_steps(model, optimizer, sparsity, 5)
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
        train_steps(model, optimizer, sparsity, 1)
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
    train_steps(model, optimizer, sparsity, 20)
    assert all(torch.equal(before[n], m) for n, m in sparsity.masks.items())


@pytest.mark.parametrize("method", rigl.DROP_AND_GROW)
def test_every_update_replaces_the_optimizer_step(method):
    """Our choice, RR's and jaxpruner's for every method (TF's for RigL; TF's SET steps, then
    updates): on an update step the caller skips optimizer.step(), so no weight moves but by the
    mask update, which only zeroes dropped ones and starts grown ones at 0."""
    model = small_net()
    optimizer = sgd(model)
    density = 0.5 if method in rigl.KERNEL_LEVEL else 0.3  # small_net's Linear weights, dense, are 34%
    sparsity = Sparsity(model, optimizer, SparsityConfig(method=method, density=density, update_interval=1), 10)
    train_steps(model, optimizer, sparsity, 0)
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


# --- rigl.py: RigL-struct, whole k×k kernels (the report's supplement) -----------------------------


def struct_net() -> nn.Module:
    """Convolutions of 3×3 and 1×1 kernels and a Linear head: the first conv is masked too."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def assert_whole_kernels(sparsity: Sparsity) -> dict[str, int]:
    """Every mask constant over each kernel's taps; returns each layer's active kernel count."""
    for name, mask in sparsity.masks.items():
        kernels = mask.flatten(2)
        assert torch.equal(kernels.all(dim=-1), kernels.any(dim=-1)), f"{name}: a kernel is partly on"
    return {name: int(mask.flatten(2).any(dim=-1).sum()) for name, mask in sparsity.masks.items()}


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_rigl_struct_keeps_whole_kernels_and_exact_kernel_counts_through_every_update(distribution):
    model = struct_net()
    optimizer = sgd(model)
    cfg = SparsityConfig(method="rigl-struct", density=0.2, distribution=distribution, update_interval=2, t_end=1.0)
    sparsity = Sparsity(model, optimizer, cfg, total_steps=61)
    # round(d_l · n_out · n_in) kernels per layer, the first conv among them; the Linear head unmasked
    expected = {n: rigl.active_count(sparsity.initial_densities[n], w.shape[0] * w.shape[1])
                for n, w in sparsity.weights.items() if w.ndim == 4}
    assert assert_whole_kernels(sparsity) == expected and set(sparsity.masks) == set(expected)
    assert "0.weight" in sparsity.masks and "8.weight" in sparsity.weights and "8.weight" not in sparsity.masks
    changed = updates = 0
    for _ in range(60):
        before = {n: m.clone() for n, m in sparsity.masks.items()}
        train_steps(model, optimizer, sparsity, 1)
        assert assert_whole_kernels(sparsity) == expected
        updates += sparsity.last_update["step"] == sparsity.step_count
        changed += any(not torch.equal(before[n], m) for n, m in sparsity.masks.items())
        for name, mask in sparsity.masks.items():  # masked weights and their momentum exactly zero
            weight = sparsity.weights[name]
            assert torch.all(weight[~mask] == 0), name
            assert torch.all(optimizer.state[weight]["momentum_buffer"][~mask] == 0), name
    assert updates == 30 and changed >= 15  # late updates (α_t small) may regrow what they dropped


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_rigl_struct_keeps_linear_dense_and_raises_the_conv_density_to_keep_d(distribution):
    shapes = shapes_of(struct_net())
    density = 0.2
    densities = rigl.initial_densities(shapes, SparsityConfig(method="rigl-struct", density=density,
                                                              distribution=distribution))
    numel = {n: math.prod(s) for n, s in shapes.items()}
    convs = [n for n, s in shapes.items() if len(s) == 4]
    assert densities["8.weight"] == 1.0
    # d_conv = (d · N_all − N_linear) / N_conv: the convolutions carry the budget the Linear head uses
    conv_density = (density * sum(numel.values()) - numel["8.weight"]) / sum(numel[n] for n in convs)
    assert sum(densities[n] * numel[n] for n in convs) == pytest.approx(conv_density * sum(numel[n] for n in convs))
    assert sum(densities[n] * numel[n] for n in shapes) == pytest.approx(density * sum(numel.values()))
    if distribution == "uniform":  # no dense first layer: every conv at d_conv
        assert all(densities[n] == pytest.approx(conv_density) for n in convs)
    if distribution == "er":  # plain ER over (n_out, n_in), as the report's "ERK" rows ran: d_l / ER_l constant
        ratios = [densities[n] / ((shapes[n][0] + shapes[n][1]) / (shapes[n][0] * shapes[n][1])) for n in convs]
        assert ratios == pytest.approx([ratios[0]] * len(ratios))


def test_rigl_struct_overall_density_of_a_run_is_d_with_linear_dense():
    model = struct_net()
    sparsity = Sparsity(model, sgd(model), SparsityConfig(method="rigl-struct", density=0.2), total_steps=10)
    rows = {r["name"]: r for r in sparsity.layer_stats()}
    assert rows["8.weight"]["density"] == 1.0 and rows["8.weight"]["active"] == 320
    # rounding to whole kernels moves each layer by at most half a kernel
    total = sparsity.total_row()
    assert abs(total["active"] - 0.2 * total["total"]) <= 3 * 9 / 2 and total["total"] == 6384


def test_rigl_struct_refuses_a_density_the_dense_linear_weights_exceed():
    with pytest.raises(ValueError, match=r"keeps 832 non-convolution weights dense.*use a density above 0\.3388"):
        Sparsity(small_net(), None, SparsityConfig(method="rigl-struct", density=0.3), total_steps=10)


def one_conv_with_kernels(weights, gradients, active) -> tuple[Sparsity, nn.Parameter]:
    """A 4-input, 2-output conv of 1×2 kernels with these kernel values, gradients and active kernels."""
    conv = nn.Conv2d(4, 2, (1, 2), bias=False)
    sparsity = Sparsity(conv, None, SparsityConfig(method="rigl-struct", density=0.5, distribution="uniform"), 10)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights).view(2, 4, 1, 2))
    sparsity.set_masks({"weight": rigl.kernel_mask(torch.tensor(active), conv.weight.shape)})
    conv.weight.grad = torch.tensor(gradients).view(2, 4, 1, 2)
    return sparsity, conv.weight


def test_rigl_struct_drops_smallest_signed_mean_weight_and_grows_largest_signed_mean_gradient():
    """RR's scores: |mean over taps| of the weight to drop, of the dense gradient to grow. Mean |.|,
    the L2 norm, the signed mean without |.| or the other tensor each choose other kernels here."""
    weights = [[[3, -3], [1, 1], [2, 2], [-1.5, -1.5]],      # |mean|: 0, 1, 2, 1.5 (mean |w|: 3, 1, 2, 1.5)
               [[0, 0], [0, 0], [0, 0], [0, 0]]]            # inactive
    gradients = [[[4, 4], [0.2, 0.2], [0.1, 0.1], [0.3, 0.3]],  # a dropped kernel may come back
                 [[5, -5], [0.5, 0.5], [2, 2], [-3, -3]]]    # |mean|: 0, 0.5, 2, 3 (mean |g|: 5, 0.5, 2, 3)
    sparsity, weight = one_conv_with_kernels(weights, gradients, [[True] * 4, [False] * 4])
    assert torch.equal(rigl.kernel_scores(weight.detach()), torch.tensor([[0, 1, 2, 1.5], [0, 0, 0, 0]]))
    sparsity.drop_and_grow(0.5)  # k = floor(0.5 · 4 active kernels) = 2: drop (0,0), (0,1); grow (0,0), (1,3)
    expected = torch.tensor([[True, False, True, True], [False, False, False, True]])
    assert torch.equal(sparsity.masks["weight"], rigl.kernel_mask(expected, weight.shape))
    # kept and regrown kernels keep their values (as RigL's connections); the new one starts at 0
    survivors = torch.tensor([[True, False, True, True], [False] * 4])
    kept = torch.tensor(weights).view(2, 4, 1, 2) * rigl.kernel_mask(survivors, weight.shape)
    assert torch.equal(weight.detach(), kept)
    assert sparsity.last_update["grown"] == 2  # one new kernel of two taps


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
        train_steps(model, optimizer, sparsity, 20)
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
        train_steps(model, optimizer, sparsity, 20)
        return sparsity
    straight, resumed = run(), run(resume_at=20)
    assert resumed.step_count == straight.step_count == 40
    assert resumed.last_update == straight.last_update
    for name in straight.masks:
        assert torch.equal(straight.masks[name], resumed.masks[name])
        assert torch.equal(straight.ever_active[name], resumed.ever_active[name])
        assert torch.equal(straight.weights[name], resumed.weights[name])
    assert resumed.exploration_rate() == straight.exploration_rate() > straight.total_row()["density"]


RESUME_CONFIG = SparsityConfig(density=0.2, update_interval=2, t_end=1.0)
"""RigL with a mask update every other step, to the end: updates come before and after the checkpoint."""


def wrapped_steps(model, optimizer, steps, batch=8):
    """A trainer's loop over a wrapped optimizer: backward, clip, step()."""
    for _ in range(steps):
        x, y = torch.randn(batch, 3, 8, 8), torch.randint(0, 10, (batch,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def resume_weights(wrap: bool, load) -> tuple[dict, dict]:
    """An uninterrupted 12-step run and one checkpointed at step 6 and resumed by `load(saved)`,
    which returns (model, optimizer, sparsity) after loading in its own order; both runs see the
    same batches after the checkpoint. Their final (weights, masks)."""
    def continued(model, optimizer, sparsity):
        torch.manual_seed(123)
        if wrap:
            wrapped_steps(model, optimizer, 6)
        else:
            train_steps(model, optimizer, sparsity, 6)
        return {n: p.detach().clone() for n, p in model.state_dict().items()}, dict(sparsity.masks)
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, RESUME_CONFIG, total_steps=12)
    optimizer = sparsity.wrap(optimizer) if wrap else optimizer
    torch.manual_seed(7)
    (wrapped_steps(model, optimizer, 6) if wrap else train_steps(model, optimizer, sparsity, 6))
    saved = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "sparsity": sparsity.state_dict()})  # as torch.save would: nothing shared
    fresh = Sparsity(small_net(), None, RESUME_CONFIG, total_steps=12)
    assert any(not torch.equal(fresh.masks[n], m) for n, m in saved["sparsity"]["masks"].items())
    straight = continued(model, optimizer, sparsity)
    return straight, continued(*load(saved))


def resume_in_order(*order: str):
    """Load a checkpoint in this order of "weights" (the model's), "sparsity" (build it: its own
    random masks are applied) and "state" (the optimizer's and the Sparsity's)."""
    def load(saved):
        model = small_net()
        optimizer = sgd(model)
        built = {}
        for step in order:
            if step == "weights":
                model.load_state_dict(saved["model"])
            elif step == "sparsity":
                built["sparsity"] = Sparsity(model, optimizer, RESUME_CONFIG, total_steps=12)
            else:
                optimizer.load_state_dict(saved["optimizer"])
                built["sparsity"].load_state_dict(saved["sparsity"])
        return model, optimizer, built["sparsity"]
    return load


def trainer_resume(weights_first: bool, trained_first: bool = False):
    """A trainer's resume (Hugging Face Trainer with accelerate): the optimizer is wrapped; the
    checkpoint's weights are loaded before or after the Sparsity is built (or after it has trained
    a few steps in this process); accelerate's prepare round-trips the optimizer's state_dict (the
    Sparsity's own masks); then the checkpoint's optimizer state, masks included, is loaded."""
    def load(saved):
        model = small_net()
        if weights_first:
            model.load_state_dict(saved["model"])
        inner = sgd(model)
        sparsity = Sparsity(model, inner, RESUME_CONFIG, total_steps=12)
        optimizer = sparsity.wrap(inner)
        if trained_first:
            wrapped_steps(model, optimizer, 3)
        if not weights_first:
            model.load_state_dict(saved["model"])
        optimizer.load_state_dict(optimizer.state_dict())
        optimizer.load_state_dict(saved["optimizer"])
        return model, optimizer, sparsity
    return load


@pytest.mark.parametrize("wrap, load", [
    (False, resume_in_order("weights", "sparsity", "state")),
    (False, resume_in_order("sparsity", "weights", "state")),
    (False, resume_in_order("sparsity", "state", "weights")),
    (True, trainer_resume(weights_first=True)), (True, trainer_resume(weights_first=False)),
    (True, trainer_resume(weights_first=False, trained_first=True))],
    ids=["weights-sparsity-state", "sparsity-weights-state", "sparsity-state-weights",
         "trainer-weights-first", "trainer-weights-after", "trainer-after-training"])
def test_resume_in_any_order_continues_bit_identically(wrap, load):
    """No order of loading the weights, building the Sparsity and loading its state (and, for a
    trainer, the wrapped optimizer's) loses a weight: the resumed run, with mask updates after its
    checkpoint, ends with the uninterrupted run's weights and masks, bit for bit."""
    (weights, masks), (resumed_weights, resumed_masks) = resume_weights(wrap, load)
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    for name, mask in masks.items():
        assert torch.equal(mask, resumed_masks[name]), name


@pytest.mark.parametrize("unscale_first", [True, False], ids=["unscale_-then-step", "step-alone"])
def test_steps_gradscaler_skips_count_alike_in_the_readme_loop_and_under_wrap(unscale_first):
    """GradScaler skips the optimizer step where the scaled gradients overflow. The README loop
    still counts it (replaces_optimizer_step runs), and so does the wrapped optimizer, whose step()
    GradScaler calls on every step: both loops reach T_end together and end with the same weights."""
    def run(wrapped: bool):
        model = small_net()
        optimizer = sgd(model)
        sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.2, update_interval=2, t_end=1.0), 12)
        stepped = sparsity.wrap(optimizer) if wrapped else optimizer
        scaler = torch.amp.GradScaler("cpu")
        torch.manual_seed(3)
        skipped = 0
        for i in range(12):
            x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
            x = x * math.inf if i in (1, 4) else x  # non-finite gradients at an update step (2) and another (5)
            stepped.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if wrapped:
                if unscale_first:
                    scaler.unscale_(stepped)
                scaler.step(stepped)
            else:
                scaler.unscale_(optimizer)
                if not sparsity.replaces_optimizer_step():
                    scaler.step(optimizer)
                sparsity.apply_masks()
            before = scaler.get_scale()
            scaler.update()
            skipped += scaler.get_scale() < before
        return sparsity, skipped, model.state_dict()
    (readme, readme_skipped, readme_weights), (wrap, wrap_skipped, wrap_weights) = run(False), run(True)
    assert readme_skipped == wrap_skipped > 0
    assert readme.step_count == wrap.step_count == 12 and readme.last_update == wrap.last_update
    for name, tensor in readme_weights.items():
        assert torch.equal(tensor, wrap_weights[name]), name


def test_masks_from_another_run_keep_the_fresh_weights_they_hold():
    """set_masks (--masks-from without --init-from): the fresh initialisation under the given masks,
    not under this Sparsity's own random masks as well."""
    source = Sparsity(small_net(), None, replace(RESUME_CONFIG, seed=5), total_steps=12)
    model = small_net()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    sparsity = Sparsity(model, None, RESUME_CONFIG, total_steps=12)
    sparsity.set_masks(source.masks)
    for name, mask in source.masks.items():
        assert torch.equal(sparsity.weights[name], initial[name] * mask), name


def test_weights_written_after_the_masks_are_never_overwritten_by_what_the_masks_zeroed():
    """What apply_masks kept is stale once the weight is written (a checkpoint loaded in place):
    a grown connection saved at exactly 0 stays 0."""
    model = small_net()
    sparsity = Sparsity(model, None, RESUME_CONFIG, total_steps=12)
    state = sparsity.state_dict()
    other = Sparsity(small_net(), None, replace(RESUME_CONFIG, seed=5), total_steps=12)
    state["masks"] = {n: m.clone() for n, m in other.masks.items()}
    state["ever_active"] = {n: m.clone() for n, m in other.masks.items()}
    with torch.no_grad():
        for weight in sparsity.weights.values():
            weight.zero_()  # a checkpoint whose weights are all 0, loaded in place
    sparsity.load_state_dict(state)
    assert all(not w.any() for w in sparsity.weights.values())


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
    assert "attn.in_proj_weight, a MultiheadAttention weight: select it in extra_weights" in caplog.text
    assert "conv.weight" not in caplog.text  # a Conv1d is masked by default
    model = attention_and_conv1d_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = SparsityConfig(density=0.2, update_interval=2, t_end=1.0, extra_weights="*.in_proj_weight")
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
    with pytest.raises(ValueError, match="extra_weights: 'attn.bias_k' matches no weight of the model"):
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
    ("erk_power_scale", math.inf, "erk_power_scale must satisfy 0 <= erk_power_scale < inf"),
    ("erk_power_scale", math.nan, "erk_power_scale must satisfy 0 <= erk_power_scale < inf"),
    ("extra_weights", ("conv", 3), "extra_weights must hold names, glob patterns or module types, got \\[3\\]"),
])
def test_bad_configuration_names_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SparsityConfig(**{field: value})


def test_repr_shows_per_layer_density_and_exploration():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.3, update_interval=2), 10)
    train_steps(model, optimizer, sparsity, 4)
    lines = repr(sparsity).splitlines()
    total = sparsity.total_row()
    assert "method=rigl" in lines[0] and f"density={total['density']:.4f}" in lines[0]
    assert f"explored={total['explored']:.4f}" in lines[0] and total["explored"] > total["density"]
    rows = sparsity.layer_stats() + [total]
    assert len(lines) == 2 + len(rows) == 2 + 5 + 1  # summary, column names, one line per masked layer, total
    assert len({r["density"] for r in rows}) > 2  # ERK: the layers' densities differ
    for line, row in zip(lines[2:], rows):
        assert line.split()[0] == row["name"]
        assert (f"{row['density']:7.4f}  {row['explored']:8.4f}  {row['active']:>11,} / {row['total']:,}"
                in line), line
    dense = Sparsity(small_net(), None, SparsityConfig(method="dense"), 10)
    assert "explored=n/a" in repr(dense).splitlines()[0]


# --- rigl.py: exploration, the in-time over-parameterisation rate (Liu et al. 2021) ---------------


def exploration_over_training(method: str, steps: int = 40, distribution: str = "erk") -> tuple[Sparsity, list]:
    """A small net trained `steps` steps at d = 0.2 with ΔT = 2; the rate after every step."""
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method=method, density=0.2, update_interval=2, t_end=1.0,
                                                         distribution=distribution), total_steps=steps + 1)
    rates = [sparsity.exploration_rate()]
    for _ in range(steps):
        train_steps(model, optimizer, sparsity, 1)
        rates.append(sparsity.exploration_rate())
    return sparsity, rates


@pytest.mark.parametrize("distribution", ["erk", "uniform"])  # uniform: a dense first layer, without a mask
def test_static_explores_exactly_its_density_and_dense_explores_nothing(distribution):
    sparsity, rates = exploration_over_training("static", distribution=distribution)
    density = sparsity.total_row()["density"]
    assert rates == [density] * len(rates)
    for row in sparsity.layer_stats():  # a layer's explored fraction is its own density
        assert row["explored"] == row["density"], row["name"]
    dense, rates = exploration_over_training("dense", steps=2)
    assert rates == [None, None, None] and dense.total_row()["explored"] is None


@pytest.mark.parametrize("method", ["rigl", "set", "rigl-sm"])
def test_drop_and_grow_explores_beyond_static_and_never_forgets(method):
    sparsity, rates = exploration_over_training(method)
    static_rate = exploration_over_training("static", steps=1)[1][0]
    assert rates[0] == static_rate  # the same initial masks
    assert all(later >= earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] > static_rate + 0.05
    # what was explored is exactly the union of every mask the run had: recount by hand
    names = list(sparsity.weights)
    ever = {n: sparsity.ever_active.get(n) for n in names}
    assert all(ever[n] is None or torch.equal(ever[n] | sparsity.masks[n], ever[n]) for n in names)
    counted = sum(int(ever[n].sum()) if ever[n] is not None else sparsity.weights[n].numel() for n in names)
    assert rates[-1] == counted / sum(w.numel() for w in sparsity.weights.values())


def test_given_masks_start_the_exploration_afresh():
    sparsity, _ = exploration_over_training("rigl", steps=6)
    ticket = Sparsity(small_net(), None, replace(sparsity.config, method="static"), total_steps=7)
    ticket.set_masks(sparsity.masks)  # a lottery ticket: its masks are all it has explored
    assert ticket.exploration_rate() == ticket.total_row()["density"] == sparsity.total_row()["density"]
    for name, mask in sparsity.masks.items():  # not the random masks it was built with
        assert torch.equal(ticket.ever_active[name], mask), name


def test_a_state_without_what_was_explored_is_refused():
    sparsity, _ = exploration_over_training("rigl", steps=6)
    state = sparsity.state_dict()
    del state["ever_active"]
    with pytest.raises(KeyError, match="ever_active"):
        Sparsity(small_net(), None, sparsity.config, total_steps=7).load_state_dict(state)


def test_exploration_counts_every_connection_that_was_ever_grown():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.2, update_interval=1, t_end=1.0), 4)
    union = {n: m.clone() for n, m in sparsity.masks.items()}
    for _ in range(3):
        train_steps(model, optimizer, sparsity, 1)
        for name, mask in sparsity.masks.items():
            union[name] |= mask
    for name in union:
        assert torch.equal(sparsity.ever_active[name], union[name]), name
