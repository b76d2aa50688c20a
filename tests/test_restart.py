"""Runs that start from another run (--masks-from, --densities-from, --init-from) and runs at
another distribution's FLOPs (--match-flops): train.py, runs.py, flops.py and report.py."""

import functools
import json
import shutil
from dataclasses import replace

import pytest
import torch

import flops
import train
from helpers import SMOKE, build_run, cli, one_line_error, rich_console, run, run_config, straight_and_resumed
from rigl import SparsityConfig
from rigl_harness import figures, labels, report, runs
from test_report import fake_run
from train import TrainConfig, resolve_recipe

SOURCE = SparsityConfig(method="rigl-sm", density=0.3, update_interval=2)
"""RigL-SM moves layer budgets: its final densities are not its initial ERK ones."""


def config(**fields) -> TrainConfig:
    return resolve_recipe(TrainConfig(**{"dataset": "synthetic", "train_subset": 256, "val_size": 0, "epochs": 1,
                                         "batch_size": 64, **fields}))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished one-epoch RigL-SM run (seed 0) at d = 0.3, ERK."""
    out = tmp_path_factory.mktemp("source") / "rigl-sm"
    train.start_run(config(), SOURCE, out, resume=False, console=rich_console())
    return out


def final_masks(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["sparsity"]["masks"]


def final_densities(run_dir):
    return {r["name"]: r["density"] for r in json.loads((run_dir / "summary.json").read_text())["layers"]}


def test_masks_from_starts_from_the_exact_final_masks_with_fresh_weights(source):
    """Table 5's restart, our reading: RigL-SM's final masks at step 0, weights of this run's --seed
    (not the source's initial weights) unless --init-from gives them."""
    init = torch.load(source / "init.pt", weights_only=True)
    run = build_run(config(seed=1, masks_from=str(source)), replace(SOURCE, method="rigl", seed=1))
    assert run.sparsity.step_count == 0 and run.sparsity.masks.keys() == final_masks(source).keys()
    for name, mask in final_masks(source).items():
        assert torch.equal(run.sparsity.masks[name], mask)
        assert not torch.equal(run.sparsity.weights[name].detach(), init[name] * mask)
    assert run.sparsity.densities() == final_densities(source)
    with_init = build_run(config(seed=1, masks_from=str(source), init_from=str(source)),
                                replace(SOURCE, method="rigl", seed=1))
    for name, mask in final_masks(source).items():
        assert torch.equal(with_init.sparsity.weights[name].detach(), init[name] * mask)


def test_densities_from_gives_the_final_densities_with_fresh_masks(source):
    cfg = config(seed=1, densities_from=str(source))
    run = build_run(cfg, replace(SOURCE, method="rigl", seed=1))
    assert run.sparse_cfg.layer_densities == final_densities(source)
    assert run.sparsity.densities() == final_densities(source)
    assert any(not torch.equal(run.sparsity.masks[n], m) for n, m in final_masks(source).items())
    assert run.sparsity.densities() != build_run(config(seed=1), replace(SOURCE, method="rigl")).sparsity.densities()


def test_config_json_records_where_masks_densities_and_weights_came_from(source):
    saved = run_config(config(masks_from=str(source), init_from=str(source)), replace(SOURCE, method="rigl"))
    assert saved["train"]["masks_from"] == saved["train"]["init_from"] == str(source)
    assert saved["derived_from"]["masks_from"] == {"path": str(source.resolve()), "method": "rigl-sm",
                                                   "distribution": "erk", "density": 0.3}
    by_densities = run_config(config(densities_from=str(source)), replace(SOURCE, method="rigl"))
    assert by_densities["sparsity"]["layer_densities"] == final_densities(source)
    assert runs.config_differences(json.loads(json.dumps(by_densities)), by_densities) == []


def unfinished(source, tmp_path):
    copy = tmp_path / "unfinished"
    shutil.copytree(source, copy)
    (copy / "summary.json").unlink()
    return copy


@pytest.mark.parametrize("option", ["masks_from", "densities_from"])
@pytest.mark.parametrize("change, words", [
    (lambda c, s, src, tmp: (replace(c, model="wrn-16-1"), s, src), "trained wrn-10-1 on synthetic, not wrn-16-1"),
    (lambda c, s, src, tmp: (c, replace(s, density=0.2), src), "was trained at density 0.3, not the --density 0.2"),
    (lambda c, s, src, tmp: (c, replace(s, distribution="uniform"), src), "started from distribution erk, not"),
    (lambda c, s, src, tmp: (c, s, unfinished(src, tmp)), "has not finished (no summary.json)"),
    (lambda c, s, src, tmp: (c, replace(s, method="pruning"), src), "method pruning starts without masks"),
    (lambda c, s, src, tmp: (replace(c, match_flops="uniform"), s, src), "--match-flops solves for a density"),
])
def test_a_source_that_does_not_fit_is_refused_in_one_line(source, tmp_path, option, change, words):
    cfg, sparse_cfg, src = change(config(), replace(SOURCE, method="rigl"), source, tmp_path)
    with pytest.raises(ValueError, match=None) as error:
        build_run(replace(cfg, **{option: str(src)}), sparse_cfg)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_dense_source_and_two_mask_sources_are_refused(tmp_path):
    dense = tmp_path / "dense"
    train.start_run(config(), SparsityConfig(method="dense"), dense, resume=False, console=rich_console())
    for option in ("masks_from", "densities_from"):
        with pytest.raises(ValueError, match="has no masks \\(method dense trains dense\\)"):
            build_run(config(**{option: str(dense)}), SparsityConfig(density=0.1))
    with pytest.raises(ValueError, match="--masks-from and --densities-from are two ways"):
        config(masks_from=str(dense), densities_from=str(dense))


def test_a_restarted_run_resumes_bit_identically(source, tmp_path, monkeypatch):
    cfg, sparse_cfg = config(epochs=2, masks_from=str(source)), replace(SOURCE, method="rigl")
    straight_and_resumed(cfg, sparse_cfg, tmp_path, monkeypatch)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "stopped"))
    assert a["step"] == b["step"] > 0 and a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name


def test_cli_refuses_two_mask_sources_and_lottery_without_init_from(source, tmp_path):
    both = run("train", *SMOKE, "--epochs", "1", "--masks-from", str(source), "--densities-from", str(source),
               "--out", str(tmp_path / "both"))
    one_line_error(both, "--masks-from and --densities-from are two ways to start the masks")
    lottery = run("train", *SMOKE, "--epochs", "1", "--method", "lottery", "--masks-from", str(source),
                  "--out", str(tmp_path / "lottery"))
    one_line_error(lottery, "method lottery needs --masks-from RUN_DIR and --init-from RUN_DIR")


# --- --match-flops: flops.matching_density ------------------------------------------------------------


@functools.cache
def counted_model(model: str, dataset: str) -> tuple[dict, dict]:
    return flops.counted_model(model, dataset)


# (model, dataset, d, the report's code's value, the value the report ran): the report's code's is
# its own FLOP count of its own masks, mean over mask seeds (docs/flops.md, "FLOP-matched densities")
REPORT_MATCHED = [("wrn-22-2", "cifar10", 0.1, 0.0584, 0.0587), ("wrn-22-2", "cifar10", 0.2, 0.1169, 0.1145),
                  ("wrn-22-2", "cifar10", 0.5, 0.2866, 0.2855),
                  ("resnet50-cifar", "cifar100", 0.1, 0.0446, 0.044), ("resnet50-cifar", "cifar100", 0.2, 0.0891, 0.088),
                  ("resnet50-cifar", "cifar100", 0.5, 0.2957, 0.298)]


@pytest.mark.parametrize("model, dataset, density, reports_code, report_ran", REPORT_MATCHED)
def test_erk_at_uniforms_flops_spends_uniforms_flops(model, dataset, density, reports_code, report_ran):
    """ERK's density whose inference FLOPs equal uniform's (its conv1 dense) at d, counted as
    everywhere (conv and linear multiply-adds), is the one the report's code computes, within the
    spread of its coin-flip masks; the values the report ran differ by up to 0.0024."""
    counted = counted_model(model, dataset)
    matched = flops.matching_density(model, dataset, SparsityConfig(density=density), counted=counted)
    erk = flops.inference_macs(counted, SparsityConfig(density=matched))
    uniform = flops.inference_macs(counted, SparsityConfig(density=density, distribution="uniform"))
    assert abs(erk - uniform) / uniform < 1e-3
    assert abs(matched - reports_code) <= 0.0003 and abs(matched - report_ran) < 0.0025


def test_match_flops_trains_at_the_solved_density_and_records_the_asked_one():
    cfg, sparse_cfg = config(match_flops="uniform"), SparsityConfig(density=0.2)
    run = build_run(cfg, sparse_cfg)
    expected = flops.matching_density(cfg.model, cfg.dataset, sparse_cfg)
    assert run.sparse_cfg.density == expected < 0.2
    assert abs(run.sparsity.total_row()["density"] - expected) < 0.01
    saved = run_config(cfg, sparse_cfg)
    assert saved["sparsity"]["density"] == expected and saved["train"]["match_flops"] == "uniform"
    assert saved["derived_from"] == {"match_flops": {"target": "uniform", "density": 0.2}}


def test_a_run_at_uniforms_flops_trains_and_records_the_solved_density(tmp_path):
    """start_run resolves the configuration asked for once, and trains and records the result."""
    cfg, sparse_cfg = config(match_flops="uniform"), SparsityConfig(density=0.2, update_interval=2)
    summary = train.start_run(cfg, sparse_cfg, tmp_path / "matched", resume=False, console=rich_console())
    expected = flops.matching_density(cfg.model, cfg.dataset, sparse_cfg)
    saved = json.loads((tmp_path / "matched" / "config.json").read_text())
    assert saved["sparsity"]["density"] == expected and saved["derived_from"]["match_flops"]["density"] == 0.2
    assert abs(summary["density"] - expected) < 0.01


def test_flops_command_shows_the_matched_density():
    result = cli("flops", "--density", "0.1", "--match-flops", "uniform", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert round(shown["density"], 4) == 0.0584 and shown["match_flops"] == {"target": "uniform", "density": 0.1}


# --- report: rows of their own, and the equal-FLOPs figure ---------------------------------------------


def derived(run_dir, value):
    path = run_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "derived_from": value}))


def test_restarted_and_flop_matched_runs_get_rows_of_their_own(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, f"plain-{seed}", "rigl", "erk", 0.1, seed, 92.0)
        fake_run(tmp_path, f"uniform-{seed}", "rigl", "uniform", 0.1, seed, 91.7)
        derived(fake_run(tmp_path, f"restart-{seed}", "rigl", "erk", 0.1, seed, 92.5),
                {"masks_from": {"path": f"/sm{seed}", "method": "rigl-sm", "distribution": "erk", "density": 0.1}})
        matched = fake_run(tmp_path, f"matched-{seed}", "rigl", "erk", 0.0584, seed, 91.4)
        derived(matched, {"match_flops": {"target": "uniform", "density": 0.1}})
    groups = report.aggregate(report.collect_runs(tmp_path))
    names = sorted(labels.group_label(g) for g in groups)
    assert names == ["RigL", "RigL (ERK)", "RigL (ERK) at uniform's FLOPs", "RigL (ERK) from RigL-SM's masks"]
    assert all(g["n"] == 2 and g["density"] == 0.1 for g in groups)
    pairs = figures.flop_matched_pairs(groups)
    assert [(u["distribution"], m["origin"]) for u, m in pairs] == [("uniform", "at uniform's FLOPs")]
    figure = figures.plot_distributions_at_equal_flops(groups, tmp_path / "figure.png")
    assert figure is not None and figure.stat().st_size > 0
    assert figures.plot_distributions_at_equal_flops([g for g in groups if not g["origin"]], tmp_path / "x.png") is None


# --- --layer-densities: TF's custom_sparsity_map from the command line ------------------------------


def test_cli_layer_densities_set_those_layers_exactly_and_are_recorded(tmp_path):
    out = tmp_path / "run"
    result = cli("train", *SMOKE, "--epochs", "1", "--layer-densities", "conv1.weight=1, fc.weight=0.5",
                 "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "config.json").read_text())["sparsity"]["layer_densities"] == \
        {"conv1.weight": 1.0, "fc.weight": 0.5}
    layers = {layer["name"]: layer for layer in json.loads((out / "summary.json").read_text())["layers"]}
    assert (layers["conv1.weight"]["active"], layers["fc.weight"]["active"]) == (16 * 3 * 9, 640 // 2)
    one_line_error(run("train", *SMOKE, "--layer-densities", "conv1.weight", "--out", str(tmp_path / "bad")),
                   "--layer-densities takes NAME=DENSITY pairs", "got 'conv1.weight'")
    one_line_error(run("train", *SMOKE, "--layer-densities", "conv1.weight=1,conv1.weight=0.5",
                       "--out", str(tmp_path / "twice")), "--layer-densities names conv1.weight twice")


def test_layer_densities_and_densities_from_are_refused_together(source):
    with pytest.raises(ValueError, match="give it or --layer-densities, not both"):
        train.resolve_sparsity(config(densities_from=str(source)),
                               SparsityConfig(density=0.3, layer_densities={"conv1.weight": 1.0}))


def set_layer_densities(run_dir, densities: dict) -> None:
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    saved["sparsity"]["layer_densities"] = densities
    path.write_text(json.dumps(saved))


def test_runs_at_set_layer_densities_get_a_row_of_their_own_and_must_agree(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, f"plain-{seed}", "rigl", "erk", 0.1, seed, 92.0)
        set_layer_densities(fake_run(tmp_path, f"set-{seed}", "rigl", "erk", 0.1, seed, 92.5), {"conv1.weight": 1.0})
    groups = report.aggregate(report.collect_runs(tmp_path))
    assert sorted(labels.group_label(g) for g in groups) == ["RigL (ERK)", "RigL (ERK) at set layer densities"]
    assert all(g["n"] == 2 for g in groups)
    set_layer_densities(tmp_path / "set-1", {"conv1.weight": 0.5})
    with pytest.raises(ValueError, match="would share a row but differ in sparsity.layer_densities"):
        report.aggregate(report.collect_runs(tmp_path))
