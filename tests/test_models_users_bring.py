"""RigL on models nobody here wrote: what gets masked, what the user is told, and how the loop fits
the tools people already use (a trainer's `optimizer.step()`, AMP, clipping, torch.compile).

Each model is a real architecture built from torch (and torchvision's mobilenet_v3_small), trained a
few dozen steps on random data on CPU.
"""

import logging

import pytest
import torch
from torch import nn

import rigl
from rigl import Sparsity, SparsityConfig
from test_rigl import sgd, small_net


def train(model, sparsity, optimizer, batches, loss_of):
    """The README's loop over prepared batches; returns how many connections grew."""
    grown = 0
    for batch in batches:
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        if sparsity.replaces_optimizer_step():
            grown += sparsity.last_update["grown"]
        else:
            optimizer.step()
        sparsity.apply_masks()
    return grown


def assert_sparse_invariants(sparsity, counts):
    """Every layer keeps its active count, and masked weights (and their momentum) are exactly 0."""
    assert sparsity.active_counts() == counts
    for name, mask in sparsity.masks.items():
        weight = sparsity.weights[name]
        assert torch.all(weight[~mask] == 0), name
        for state in sparsity.optimizer.state.get(weight, {}).values():
            if torch.is_tensor(state) and state.shape == weight.shape and sparsity.config.method != "snfs":
                assert torch.all(state[~mask] == 0), name


def classify(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def batches(shape, classes=4, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g))
            for _ in range(n)]


def rigl_run(model, batches_, config, optimizer=None):
    """Build, train with the README's loop, and check the invariants; returns the Sparsity."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsity = Sparsity(model, optimizer, config, total_steps=len(batches_))
    counts = sparsity.active_counts()
    grown = train(model, sparsity, optimizer, batches_, classify)
    assert grown > 0
    assert_sparse_invariants(sparsity, counts)
    return sparsity


RIGL = dict(density=0.1, update_interval=4, t_end=1.0)


# --- What gets masked by default -------------------------------------------------------------------


def test_conv1d_conv3d_and_linear_are_masked_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))
    sparsity = rigl_run(model, batches((8, 3, 32)), SparsityConfig(**RIGL))
    assert list(sparsity.weights) == ["0.weight", "2.weight", "6.weight"]
    volume = nn.Sequential(nn.Conv3d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    volume(torch.randn(1, 2, 5, 5, 5))  # the lazy layer takes its shape
    assert list(rigl.masked_weights(volume)) == ["0.weight", "3.weight"]


class Decoder(nn.Module):
    """A ConvTranspose2d decoder: a code vector up-sampled to an 8×8 image."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(8, 32 * 2 * 2)
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                                nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1))

    def forward(self, z):
        return self.up(self.project(z).view(-1, 32, 2, 2))


def test_a_conv_transpose_decoder_is_masked_and_trains_sparse():
    torch.manual_seed(0)
    model = Decoder()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)) for _ in range(20)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsity = Sparsity(model, optimizer, SparsityConfig(**RIGL), total_steps=20)
    assert list(sparsity.weights) == ["project.weight", "up.0.weight", "up.2.weight"]
    counts = sparsity.active_counts()
    assert train(model, sparsity, optimizer, data, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])) > 0
    assert_sparse_invariants(sparsity, counts)


# --- Recurrent and attention weights: a WARNING, or sparse when selected ---------------------------


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(12, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def left_dense_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "stay dense" in r.getMessage()]


def test_an_lstm_left_dense_is_one_warning_naming_its_share(caplog):
    torch.manual_seed(0)
    model = LSTMClassifier()
    lstm_share = sum(p.numel() for n, p in model.lstm.named_parameters() if "weight" in n) \
        / sum(p.numel() for p in model.parameters())
    with caplog.at_level(logging.WARNING, logger="rigl"):
        sparsity = Sparsity(model, None, SparsityConfig(density=0.1), total_steps=10)
    warnings = left_dense_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"4 weight(s), {100 * lstm_share:.1f}% of the parameters, stay dense (of LSTM:")
    assert "extra_weights by name, glob pattern or module type" in warnings[0]
    assert list(sparsity.weights) == ["head.weight"]
    assert f"under masks ({100 * 32 * 4 / sparsity.parameter_count:.1f}% of the parameters)" in repr(sparsity)
    assert 'silence this with logging.getLogger("rigl").setLevel(logging.ERROR)' in warnings[0]


class VisionTransformerBits(nn.Module):
    """What a ViT or Swin holds beside its Linear layers: a class token, a position embedding, a
    relative-position bias table and a layer scale, none of which anyone sparsifies."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 16))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.layer_scale = nn.Parameter(torch.ones(1, 1, 16))
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)


def test_the_warning_names_only_weights_a_user_would_sparsify(caplog):
    with caplog.at_level(logging.WARNING, logger="rigl"):
        Sparsity(VisionTransformerBits(), None, SparsityConfig(), 10)
    assert left_dense_warnings(caplog) == []
    model = VisionTransformerBits()
    model.embed = nn.Embedding(10, 16)  # an embedding's weight is one a user may mean to sparsify
    with caplog.at_level(logging.WARNING, logger="rigl"):
        Sparsity(model, None, SparsityConfig(), 10)
    [warning] = left_dense_warnings(caplog)
    assert "(of Embedding: embed.weight)" in warning


def test_an_embedding_with_sparse_gradients_is_refused_when_selected():
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Linear(8, 4))
    Sparsity(model, None, SparsityConfig(), 10)  # left dense: its gradients are never ranked
    with pytest.raises(ValueError, match=r"^0.weight has sparse gradients \(nn.Embedding\(sparse=True\)\)"):
        Sparsity(model, None, SparsityConfig(extra_weights=(nn.Embedding,)), 10)


def test_the_header_tells_the_share_under_masks_and_the_share_kept_dense():
    """Dense layers by choice are neither counted under masks nor in their density."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    sparsity = Sparsity(model, None, SparsityConfig(density=0.1, dense_layers=("0",)), 10)
    header = repr(sparsity).splitlines()[0]
    total = sum(p.numel() for p in model.parameters())
    assert f"density=0.1000 under masks ({100 * 1000 / total:.1f}% of the parameters)" in header
    assert f"dense without a mask: {100 * 10000 / total:.1f}% of the parameters" in header


@pytest.mark.parametrize("selector", [nn.LSTM, "lstm.weight_*", "lstm"])
def test_an_lstm_is_sparse_when_selected_by_type_pattern_or_module_name(selector, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="rigl"):
        sparsity = rigl_run(LSTMClassifier(), batches((8, 6, 12)), SparsityConfig(**RIGL, extra_weights=selector))
    assert list(sparsity.weights) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1",
                                      "lstm.weight_hh_l1", "head.weight"]
    assert left_dense_warnings(caplog) == []


class TokenEncoder(nn.Module):
    """nn.TransformerEncoder over already-embedded tokens, then a classifier."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_a_transformer_encoder_with_a_pattern_for_its_packed_weights(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="rigl"):
        Sparsity(TokenEncoder(), None, SparsityConfig(), 10)
    assert "(of MultiheadAttention: encoder.layers.0.self_attn.in_proj_weight" in left_dense_warnings(caplog)[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rigl"):
        sparsity = rigl_run(TokenEncoder(), batches((8, 5, 16)),
                            SparsityConfig(**RIGL, extra_weights="*.in_proj_weight"))
    assert left_dense_warnings(caplog) == []
    assert len(sparsity.weights) == 2 * 4 + 1  # per layer: in_proj, out_proj, linear1, linear2
    assert "encoder.layers.1.self_attn.in_proj_weight" in sparsity.masks


@pytest.mark.parametrize("field, selector, near", [
    ("extra_weights", "encoder.layers.0.self_attn.in_proj", "encoder.layers.0.self_attn.in_proj_weight"),
    ("extra_weights", "*.in_proj_weights", "encoder.layers.0.self_attn.in_proj_weight"),
    ("dense_layers", "encoder.layers.0.linear", "encoder.layers.0.linear1.weight"),
    ("extra_weights", nn.LSTM, "MultiheadAttention"),
])
def test_a_selector_that_matches_nothing_names_the_field_and_near_candidates(field, selector, near):
    with pytest.raises(ValueError, match=rf"{field}: .* matches no .*nearest: \[.*'{near}'"):
        Sparsity(TokenEncoder(), None, SparsityConfig(**{field: selector}), 10)


def test_dense_layers_take_patterns_and_module_types():
    cfg = SparsityConfig(dense_layers=("encoder.*.linear2", nn.modules.linear.NonDynamicallyQuantizableLinear))
    sparsity = Sparsity(TokenEncoder(), None, cfg, 10)
    assert set(sparsity.dense_layers) == {"encoder.layers.0.linear2.weight", "encoder.layers.1.linear2.weight",
                                          "encoder.layers.0.self_attn.out_proj.weight",
                                          "encoder.layers.1.self_attn.out_proj.weight"}
    assert not set(sparsity.dense_layers) & set(sparsity.masks)


# --- Depthwise convolutions: dense by default, as TF's MobileNet -----------------------------------


def test_mobilenet_v3_keeps_depthwise_convolutions_dense_unless_opted_in(caplog):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    depthwise = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
                 and m.groups == m.in_channels > 1]
    assert len(depthwise) == 11
    with caplog.at_level(logging.WARNING, logger="rigl"):
        sparsity = Sparsity(model, None, SparsityConfig(density=0.1, distribution="uniform"), 10)
    assert not set(depthwise) & set(sparsity.weights)
    assert "mask_depthwise=True masks depthwise convolutions" in left_dense_warnings(caplog)[0]
    opted_in = Sparsity(model, None, SparsityConfig(density=0.1, distribution="uniform", mask_depthwise=True), 10)
    assert set(depthwise) <= set(opted_in.masks)
    assert len(opted_in.weights) == len(sparsity.weights) + len(depthwise)


# --- Tied weights: masked once, under the name the user gives --------------------------------------


class TiedLanguageModel(nn.Module):
    """An embedding whose matrix is also the output layer's (GPT-2's wte and lm_head)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.decoder = nn.Linear(16, 50, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens):
        return self.decoder(torch.tanh(self.mix(self.embed(tokens))))


def test_a_tied_weight_is_masked_once_under_the_name_given():
    torch.manual_seed(0)
    by_default = Sparsity(TiedLanguageModel(), None, SparsityConfig(), 10)
    assert list(by_default.weights) == ["mix.weight", "decoder.weight"]  # a Linear's weight
    named = Sparsity(TiedLanguageModel(), None, SparsityConfig(extra_weights="embed"), 10)
    assert list(named.weights) == ["embed.weight", "mix.weight"]
    assert named.total_row()["total"] == 50 * 16 + 16 * 16  # counted once
    for alias in ("embed", "decoder.weight"):  # kept dense under either of its names
        kept = Sparsity(TiedLanguageModel(), None, SparsityConfig(dense_layers=alias), 10)
        assert kept.dense_layers == ("decoder.weight",) and "decoder.weight" not in kept.masks
    model = TiedLanguageModel()
    tokens = [torch.randint(0, 50, (8, 6)) for _ in range(12)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsity = Sparsity(model, optimizer, SparsityConfig(**RIGL, extra_weights="embed"), total_steps=12)
    counts = sparsity.active_counts()
    loss_of = lambda m, t: nn.functional.cross_entropy(m(t).flatten(0, 1), t.flatten())  # noqa: E731
    assert train(model, sparsity, optimizer, tokens, loss_of) > 0
    assert_sparse_invariants(sparsity, counts)
    assert model.decoder.weight is model.embed.weight


# --- wrap(optimizer): the loop's lines inside step() ------------------------------------------------


def explicit_and_wrapped(make_optimizer, steps=50, method="rigl", scaler=None, clip=None):
    """The same training twice: the README's explicit loop, and a trainer's loop over wrap()."""
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(steps)]
    results = []
    for wrapped in (False, True):
        model = small_net()
        optimizer = make_optimizer(model)
        sparsity = Sparsity(model, optimizer, SparsityConfig(method=method, density=0.2, update_interval=5),
                            total_steps=steps)
        opt = sparsity.wrap(optimizer) if wrapped else optimizer
        for x, y in data:
            loss = classify(model, (x, y))
            opt.zero_grad()
            loss.backward()
            if wrapped:
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            else:
                if not sparsity.replaces_optimizer_step():
                    if clip:
                        nn.utils.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
                sparsity.apply_masks()
        results.append((model, sparsity))
    return results


@pytest.mark.parametrize("make_optimizer", [
    sgd, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05)], ids=["sgd", "adamw"])
@pytest.mark.parametrize("method", ["rigl", "snfs"])
def test_wrap_gives_the_weights_and_masks_of_the_explicit_loop(make_optimizer, method):
    (explicit_model, explicit), (wrapped_model, wrapped) = explicit_and_wrapped(make_optimizer, method=method)
    assert wrapped.step_count == explicit.step_count == 50
    assert wrapped.last_update == explicit.last_update and explicit.last_update["step"] == 35
    for name in explicit.masks:
        assert torch.equal(explicit.masks[name], wrapped.masks[name]), name
    for (name, a), b in zip(explicit_model.state_dict().items(), wrapped_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_clipping_before_a_wrapped_step_sees_only_the_masked_gradients():
    (explicit_model, _), (wrapped_model, _) = explicit_and_wrapped(sgd, steps=30, clip=0.05)
    for a, b in zip(explicit_model.parameters(), wrapped_model.parameters()):
        assert torch.equal(a, b)
    model = small_net()
    sparsity = Sparsity(model, sgd(model), SparsityConfig(density=0.2, update_interval=2), 10)
    sparsity.wrap()
    for step in (1, 2):  # step 1 takes the optimizer step, step 2 is a mask update
        classify(model, batches((8, 3, 8, 8), classes=10, n=1)[0]).backward()
        for name, mask in sparsity.masks.items():
            outside = sparsity.weights[name].grad[~mask]
            assert torch.all(outside == 0) if step == 1 else torch.any(outside != 0), (step, name)
        sparsity.wrap().step()
        sparsity.wrap().zero_grad()


def test_wrap_is_an_optimizer_for_schedulers_and_checkpoints_the_masks():
    model = small_net()
    optimizer = sgd(model)
    sparsity = Sparsity(model, optimizer, SparsityConfig(method="set", density=0.3, update_interval=3), 40)
    wrapped = sparsity.wrap(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(wrapped, step_size=5, gamma=0.5)
    for _ in range(10):
        classify(model, batches((8, 3, 8, 8), classes=10, n=1)[0]).backward()
        wrapped.step()
        wrapped.zero_grad()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)
    state = wrapped.state_dict()
    other_model = small_net()
    other = Sparsity(other_model, sgd(other_model), SparsityConfig(method="set", density=0.3, update_interval=3, seed=5), 40)
    other.wrap().load_state_dict(state)
    assert other.step_count == 10 and all(torch.equal(other.masks[n], sparsity.masks[n]) for n in sparsity.masks)
    assert other.optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    with pytest.raises(ValueError, match="give the optimizer this Sparsity was built with"):
        sparsity.wrap(sgd(model))


# --- Mixed precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_amp_with_a_grad_scaler_through_wrap_and_the_explicit_loop(dtype):
    """GradScaler.step(wrapped) unscales before the mask update; the explicit loop unscales itself."""
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(12)]
    masks = []
    for wrapped in (False, True):
        model = small_net()
        optimizer = sgd(model)
        sparsity = Sparsity(model, optimizer, SparsityConfig(density=0.2, update_interval=4), total_steps=12)
        counts, opt = sparsity.active_counts(), sparsity.wrap(optimizer) if wrapped else optimizer
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        for x, y in data:
            with torch.autocast("cpu", dtype=dtype):
                loss = classify(model, (x, y))
            opt.zero_grad()
            scaler.scale(loss).backward()
            if wrapped:
                scaler.step(opt)
            else:
                scaler.unscale_(optimizer)  # before the mask update, which ranks the true gradients
                if not sparsity.replaces_optimizer_step():
                    scaler.step(optimizer)
                sparsity.apply_masks()
            scaler.update()
        assert sparsity.step_count == 12 and sparsity.last_update["step"] == 8
        assert_sparse_invariants(sparsity, counts)
        masks.append(sparsity.masks)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


# --- torch.compile --------------------------------------------------------------------------------


def test_a_data_parallel_model_keeps_its_names():
    model = small_net()
    sparsity = Sparsity(nn.DataParallel(model), None, SparsityConfig(), 10)
    assert list(sparsity.weights) == list(rigl.masked_weights(model))  # no "module." prefix


def test_a_compiled_model_keeps_its_names_and_never_recompiles_across_mask_updates():
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    model = small_net()
    compiled = torch.compile(model, backend=counter)
    optimizer = sgd(model)
    sparsity = Sparsity(compiled, optimizer, SparsityConfig(density=0.2, update_interval=3), total_steps=12)
    assert list(sparsity.weights) == list(rigl.masked_weights(model))  # no "_orig_mod." prefix
    counts, wrapped = sparsity.active_counts(), sparsity.wrap(optimizer)
    for batch in batches((8, 3, 8, 8), classes=10, n=12):
        classify(compiled, batch).backward()
        wrapped.step()
        wrapped.zero_grad()
    assert sparsity.last_update["step"] == 6 and sparsity.last_update["grown"] > 0
    assert counter.frame_count == 1, f"{counter.frame_count} compilations"
    assert_sparse_invariants(sparsity, counts)
