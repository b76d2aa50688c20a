"""`python rigl.py report` (rigl_harness/report.py): Table 2 and figures from run directories."""

import csv
import io
import json
import re
from typing import get_args

import pytest
from rich.console import Console

from rigl import Method
from rigl_harness import comparisons, figures, labels, published, report


# --- report.py ------------------------------------------------------------------------------------


LAYERS = {"conv1.weight": (16, 3, 3, 3), "group1.0.conv1.weight": (32, 16, 3, 3),
          "group2.0.conv1.weight": (64, 32, 3, 3), "group3.0.conv2.weight": (128, 128, 3, 3),
          "fc.weight": (10, 128)}


def fake_run(root, name, method, distribution, density, seed, test_acc, multiplier=1.0,
             drop_fraction=0.3, update_interval=100, flops=(0.35, 0.35), history=3,
             layers=LAYERS, explored=None, flops_history=(), val_acc=None, train=None):
    """A finished run directory as `train` writes it: config.json, summary.json, densities.jsonl
    with epochs 0..history (densities drift a little) and metrics.jsonl with one record per epoch,
    its forward FLOPs ratio `flops_history` (default: the summary's, every epoch)."""
    out = root / name
    out.mkdir(parents=True)
    config = {"train": {"dataset": "cifar10", "model": "wrn-22-2", "epochs": 250,
                        "multiplier": multiplier, "seed": seed, **(train or {})},
              "sparsity": {"method": method, "density": density, "distribution": distribution,
                           "drop_fraction": drop_fraction, "update_interval": update_interval},
              "torch": "2.x", "git_commit": None}
    (out / "config.json").write_text(json.dumps(config))
    final = {n: min(1.0, density * (1 + i / 4)) for i, n in enumerate(layers)}
    summary = {"final_val_acc": val_acc, "final_test_acc": test_acc, "best_val_acc": None,
               "epochs": 250, "steps": 87_891, "wall_time": 1.0, "density": density,
               "layers": [{"name": n, "shape": list(s), "density": final[n], "active": 0, "total": 1}
                          for n, s in layers.items()],
               "train_flops_ratio": flops[0], "inference_flops_ratio": flops[1], "explored": explored}
    (out / "summary.json").write_text(json.dumps(summary))
    ratios = flops_history or [flops[1]] * history
    (out / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "step": 10 * (e + 1),
                                                           "inference_flops_ratio": r}) + "\n"
                                               for e, r in enumerate(ratios)))
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
    runs = report.collect_runs(sweep(tmp_path))
    assert len(runs) == 19                      # the unfinished run is not one of them
    assert not any("d0.05" in r["path"] for r in runs)
    groups = report.aggregate(runs)
    rigl_erk = group_of(groups, method="rigl", distribution="erk", density=0.1)
    assert rigl_erk["n"] == 3 and rigl_erk["seeds"] == [0, 1, 2]
    assert rigl_erk["test_mean"] == pytest.approx(92.5)
    assert rigl_erk["test_std"] == pytest.approx(0.5)       # sample std (ddof = 1), not 0.408
    assert group_of(groups, method="rigl", distribution="uniform", density=0.2)["n"] == 2
    assert group_of(groups, method="rigl-sg")["test_std"] == 0.0   # one seed: no spread
    assert report.format_cell(group_of(groups, method="rigl-sg")) == "92.30 (0.40×, 0.36×)"  # and none shown
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
    groups = report.aggregate(report.collect_runs(tmp_path))
    assert [g["n"] for g in groups] == [2, 2, 2, 2]
    names = {labels.group_label(g) for g in groups}
    assert names == {"RigL (ERK)", "RigL (ERK) α=0.5", "RigL (ERK) ΔT=200", "RigL 2× (ERK)"}
    assert group_of(groups, multiplier=2.0)["test_mean"] == pytest.approx(93.0)


def test_table_cells_markdown_and_csv(tmp_path):
    groups = report.aggregate(report.collect_runs(sweep(tmp_path)))
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
    md, csv_path, _, _ = report.write_tables(header, rows, groups, [], report.collect_runs(tmp_path), tmp_path)
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
    result = report.make_report(sweep(tmp_path), console)
    figures = tmp_path / "figures"
    expected = [figures / "accuracy_vs_density.png", figures / "accuracy_vs_density_panels.png",
                figures / "accuracy_vs_flops.png",
                figures / "layer_densities.png",
                figures / "density_over_training_cifar10-wrn-22-2-rigl-sg-erk-d0.1-x1-a0.3-dt100.png",
                figures / "flops_over_training_cifar10-wrn-22-2-d0.1.png",
                figures / "flops_over_training_cifar10-wrn-22-2-d0.2.png"]
    assert result["figures"] == expected
    assert result["tables"] == [tmp_path / name for name in ("report.md", "report.csv", "comparisons.csv",
                                                             "runs.csv")]
    printed = console.file.getvalue()
    for path in expected + result["tables"]:
        assert f"wrote {path}" in printed
    for path in expected:
        assert_png(path)
    assert "skipped 1 unfinished run" in printed and "rigl-erk-d0.05-s0" in printed
    assert "92.50 ± 0.50 (0.35×, 0.35×)" in printed        # the rich table
    assert (result["runs"], result["groups"]) == (19, 8)


def test_layer_densities_picks_rigl_erk(tmp_path):
    runs = report.collect_runs(sweep(tmp_path))
    chosen = figures.representative_run(runs)
    assert (chosen["method"], chosen["distribution"], chosen["density"], chosen["seed"]) == \
        ("rigl", "erk", 0.1, 0)
    short = report.run_record(fake_run(tmp_path, "short", "set", "erk", 0.1, 0, 91.0, history=1))
    assert_png(figures.plot_layer_densities(short, tmp_path / "short.png"))


def test_an_accuracy_that_is_no_percentage_is_refused(tmp_path):
    run = fake_run(tmp_path, "edited", "rigl", "erk", 0.1, 0, 250.0)
    with pytest.raises(ValueError, match="final_test_acc is 250.0, not a percentage"):
        report.run_record(run)


def test_a_run_without_its_records_is_named_not_reported_without_figures(tmp_path):
    """No compatibility with runs older than their records: a finished run has both."""
    for name in ("metrics.jsonl", "densities.jsonl"):
        run = fake_run(tmp_path, name, "rigl", "erk", 0.1, 0, 92.0)
        (run / name).unlink()
        with pytest.raises(ValueError, match=f"{name} is missing: a finished run writes it before summary.json"):
            report.run_record(run)
    run = fake_run(tmp_path, "old-metrics", "rigl", "erk", 0.1, 0, 92.0)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "step": 10}\n')  # no inference_flops_ratio
    with pytest.raises(ValueError, match="metrics.jsonl: record 1 has no integer step and numeric"):
        report.run_record(run)
    for key in ("train_flops_ratio", "inference_flops_ratio", "epochs", "explored"):
        run = fake_run(tmp_path, f"old-summary-{key}", "rigl", "erk", 0.1, 0, 92.0)
        summary = json.loads((run / "summary.json").read_text())
        del summary[key]
        (run / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(ValueError, match=f"summary.json is not a run's summary: it has no {key}"):
            report.run_record(run)
        if key != "explored":  # null only for methods without masks
            (run / "summary.json").write_text(json.dumps({**summary, key: None}))
            with pytest.raises(ValueError, match=f"summary.json is not a run's summary: {key} is None"):
                report.run_record(run)


def test_nothing_to_plot_returns_none(tmp_path):
    dense = report.aggregate([report.run_record(fake_run(tmp_path, "dense", "dense", "erk", 0.1, 0, 93.0))])
    assert figures.plot_accuracy_vs_density([], tmp_path / "a.png") is None
    assert figures.plot_accuracy_vs_density(dense, tmp_path / "a.png") is None
    no_flops = [{**g, "train_flops_ratio": None} for g in dense]
    assert figures.plot_accuracy_vs_flops(no_flops, tmp_path / "b.png") is None
    unmasked = report.run_record(fake_run(tmp_path, "unmasked", "rigl-sm", "erk", 0.1, 0, 92.0, history=0, layers={}))
    assert figures.plot_density_over_training(unmasked, tmp_path / "c.png") is None  # one record: no line
    assert figures.plot_layer_densities(unmasked, tmp_path / "d.png") is None  # no layers
    assert not list(tmp_path.glob("*.png"))


def test_the_lr_figure_needs_several_learning_rates_of_one_setting(tmp_path):
    runs = [fake_run(tmp_path, "plain", "rigl", "erk", 0.1, 0, 92.0),
            fake_run(tmp_path, "restarted", "rigl", "erk", 0.1, 0, 92.5),
            fake_run(tmp_path, "longer", "rigl", "erk", 0.1, 0, 93.0, multiplier=2.0)]
    for run in runs:  # all at the recipe's lr, the restarted one from RigL-SM's masks
        config = json.loads((run / "config.json").read_text())
        config["train"]["lr"] = 0.1
        if run.name == "restarted":
            config["derived_from"] = {"masks_from": {"path": "/runs/sm", "method": "rigl-sm"}}
        (run / "config.json").write_text(json.dumps(config))
    groups = report.aggregate(report.collect_runs(tmp_path))
    assert [g["n"] for g in groups] == [1, 1, 1]  # three rows at the same learning rate: no lr axis
    assert figures.plot_accuracy_vs_lr(groups, tmp_path / "lr.png") is None


def test_no_finished_runs_is_an_error(tmp_path):
    unfinished_run(tmp_path, "running")
    with pytest.raises(ValueError, match=rf"no finished runs \(summary.json\) under {tmp_path}$"):
        report.make_report(tmp_path, Console(file=io.StringIO()))


def test_report_refuses_to_pool_runs_that_differ_beyond_the_seed(tmp_path):
    a = fake_run(tmp_path, "a", "rigl", "erk", 0.1, 0, 92.0)
    fake_run(tmp_path, "b", "rigl", "erk", 0.1, 1, 92.5)
    config = json.loads((a / "config.json").read_text())
    config["train"]["epochs"] = 2
    (a / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"would share a row but differ in train.epochs 2 vs 250"):
        report.aggregate(report.collect_runs(tmp_path))
    config["train"]["epochs"] = 250
    (a / "config.json").write_text(json.dumps(config))
    fake_run(tmp_path, "c", "rigl", "erk", 0.1, 1, 91.0)
    with pytest.raises(ValueError, match="seed 1 is run more than once in one row"):
        report.aggregate(report.collect_runs(tmp_path))


def test_damaged_run_files_are_named(tmp_path):
    run = fake_run(tmp_path, "a", "rigl", "erk", 0.1, 0, 92.0)
    (run / "summary.json").write_text("{ not json")
    with pytest.raises(ValueError, match=f"{run / 'summary.json'} is not readable JSON"):
        report.collect_runs(tmp_path)
    (run / "summary.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="is not a run's summary"):
        report.collect_runs(tmp_path)


@pytest.mark.parametrize("damage, words", [
    ("densities", "densities.jsonl: record 5 is not"),
    ("summary", "summary.json is not a run's summary: final_test_acc is None, not a finite number"),
    ("layers", "summary.json is not a run's summary: layers is not a list"),
])
def test_a_damaged_run_is_named_before_anything_is_written(tmp_path, damage, words):
    """Every run's files are checked before report.md, report.csv or a figure is written."""
    fake_run(tmp_path, "a", "rigl", "erk", 0.1, 0, 92.0)
    run = fake_run(tmp_path, "b", "rigl", "erk", 0.2, 0, 93.0)
    summary = json.loads((run / "summary.json").read_text())
    if damage == "densities":
        with open(run / "densities.jsonl", "a") as f:
            f.write(json.dumps({"epoch": "x"}) + "\n")
    else:
        bad = {"final_test_acc": None} if damage == "summary" else {"layers": [{"name": "fc.weight"}]}
        (run / "summary.json").write_text(json.dumps({**summary, **bad}))
    with pytest.raises(ValueError, match=re.escape(words)):
        report.make_report(tmp_path, Console(file=io.StringIO()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_methods_are_written_as_the_report_writes_them():
    assert {m: labels.method_name(m) for m in get_args(Method)} == {
        "dense": "Dense", "small-dense": "Small-Dense", "static": "Static", "set": "SET", "rigl": "RigL",
        "snfs": "SNFS", "pruning": "Pruning", "lottery": "Lottery", "rigl-sg": "RigL-SG", "rigl-sm": "RigL-SM",
        "rigl-struct": "RigL-struct"}


def test_exploration_is_tabulated_beside_table_2_and_in_the_csv(tmp_path):
    for seed, explored in enumerate([0.30, 0.34]):
        fake_run(tmp_path, f"rigl-{seed}", "rigl", "erk", 0.1, seed, 92.0, explored=explored)
        fake_run(tmp_path, f"static-{seed}", "static", "erk", 0.1, seed, 90.0, explored=0.1)
    fake_run(tmp_path, "dense", "dense", "erk", 0.1, 0, 93.0)
    console = Console(file=io.StringIO(), width=300)
    report.make_report(tmp_path, console)
    lines = (tmp_path / "report.md").read_text(encoding="utf-8").splitlines()
    explored_table = lines[lines.index(report.EXPLORED_CAPTION):]
    assert "| RigL (ERK) | 0.3200 |  | 2 |" in explored_table
    assert "| Static (ERK) | 0.1000 |  | 2 |" in explored_table
    assert "| Dense |  | n/a | 1 |" in explored_table
    with open(tmp_path / "report.csv", newline="", encoding="utf-8") as f:
        parsed = list(csv.DictReader(f))
    assert float(group_of(parsed, method="rigl")["explored"]) == pytest.approx(0.32)
    assert group_of(parsed, method="dense")["explored"] == ""
    assert "Explored" in console.file.getvalue() and "0.3200" in console.file.getvalue()


def test_flops_over_training_figure_per_task_and_density(tmp_path):
    fake_run(tmp_path, "sm", "rigl-sm", "erk", 0.1, 0, 92.0, flops_history=[0.20, 0.24, 0.25])
    fake_run(tmp_path, "rigl", "rigl", "uniform", 0.1, 0, 92.0, flops_history=[0.13, 0.13, 0.13])
    fake_run(tmp_path, "denser", "rigl", "erk", 0.2, 0, 92.0)  # a figure of its own at d = 0.2
    fake_run(tmp_path, "dense", "dense", "erk", 0.1, 0, 93.0, flops=(1.0, 1.0))  # no masks: in no figure
    runs = report.collect_runs(tmp_path)
    assert report.run_record(tmp_path / "sm")["flops_history"] == [(10, 0.20), (20, 0.24), (30, 0.25)]
    paths = figures.flops_figures(runs, report.aggregate(runs), tmp_path / "figures")
    assert paths == [tmp_path / "figures" / f"flops_over_training_cifar10-wrn-22-2-d{d}.png" for d in ("0.1", "0.2")]
    assert_png(paths[0])
    levels = figures.flop_levels("cifar10", "wrn-22-2", 0.1)
    assert levels["Random (uniform)"] < levels["ERK"] < 1  # ERK at d = 0.1 costs more than uniform
    (tmp_path / "sm" / "metrics.jsonl").write_text('{"step": 1, "inference_flops_ratio": "a"}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: record 1"):
        report.run_record(tmp_path / "sm")


# --- comparisons.py -----------------------------------------------------------------------------


@pytest.mark.parametrize("p, df, t", [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776),
                                      (0.975, 10, 2.228), (0.975, 30, 2.042), (0.95, 5, 2.015)])
def test_t_quantiles_are_the_tables(p, df, t):
    assert comparisons.t_quantile(p, df) == pytest.approx(t, abs=1e-3)


def test_welch_interval_difference_degrees_of_freedom_and_verdict():
    # equal sizes and variances: df = 2 (n - 1) = 4, half-width t(0.975, 4) · sqrt(1/3 + 1/3)
    found = comparisons.welch([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    half = 2.7764 * (2 / 3) ** 0.5
    assert found["df"] == pytest.approx(4) and found["difference"] == pytest.approx(1.0)
    assert (found["low"], found["high"]) == (pytest.approx(1 - half, abs=1e-3), pytest.approx(1 + half, abs=1e-3))
    assert comparisons.verdict(found, "RigL", "SET") == "within noise"
    # unequal variances: Welch–Satterthwaite's df lies between the smaller n - 1 and n_a + n_b - 2
    uneven = comparisons.welch([90.0, 90.2, 90.1, 90.3], [85.0, 86.0, 85.5])
    assert 2 < uneven["df"] < 5 and uneven["low"] > 0
    assert comparisons.verdict(uneven, "RigL", "Static") == "RigL better"
    assert comparisons.verdict(comparisons.welch([1.0, 1.1], [5.0, 5.2]), "RigL", "SNFS") == "SNFS better"
    assert comparisons.welch([92.0], [91.0, 91.5]) is None
    assert comparisons.verdict(None, "RigL", "SET") == "no verdict: fewer than two seeds"


def findings_runs(root, interval=25):
    """Three seeds of RigL, SET and static at d = 0.05 uniform and of RigL at ERK; pruning and RigL 2×;
    a (α, ΔT) grid at d = 0.1 (ERK), the reference ΔT = `interval`, where α = 0.5 has the best validation."""
    for seed in range(3):
        for method, acc in (("rigl", 60.0), ("set", 58.0), ("static", 55.0), ("pruning", 61.0)):
            fake_run(root, f"{method}-s{seed}", method, "uniform", 0.05, seed, acc + seed / 10,
                     update_interval=interval)
        fake_run(root, f"rigl-erk-s{seed}", "rigl", "erk", 0.05, seed, 61.0 + seed, update_interval=interval)
        fake_run(root, f"rigl-2x-s{seed}", "rigl", "uniform", 0.05, seed, 63.0 + seed / 10, multiplier=2.0,
                 update_interval=interval)
        for alpha, dt, acc, val in ((0.3, interval, 70.0, 69.0), (0.5, interval, 70.5, 71.0),
                                    (0.3, 2 * interval, 69.9, 68.0)):
            fake_run(root, f"grid-a{alpha}-dt{dt}-s{seed}", "rigl", "erk", 0.1, seed, acc + seed / 5,
                     drop_fraction=alpha, update_interval=dt, val_acc=val)
    return root


def test_the_report_compares_rigl_with_each_method_pruning_with_longer_rigl_and_the_grid(tmp_path):
    groups = report.aggregate(report.collect_runs(findings_runs(tmp_path)))
    found = {(c["first"], c["second"], c["density"]): c for c in comparisons.compare(groups, reference_interval=25)}
    assert set(found) == {
        ("RigL ΔT=25", "SET ΔT=25", 0.05), ("RigL ΔT=25", "Static", 0.05), ("RigL ΔT=25", "Pruning ΔT=25", 0.05),
        ("RigL 2× ΔT=25", "Pruning ΔT=25", 0.05),  # longer RigL against pruning; no 2× row of the others
        ("RigL (ERK) α=0.5 ΔT=25", "RigL (ERK) ΔT=25 (reference)", 0.1),
        ("RigL (ERK) ΔT=50", "RigL (ERK) ΔT=25 (reference)", 0.1)}  # RigL (ERK) at 0.05 has no ERK rival
    static = found[("RigL ΔT=25", "Static", 0.05)]
    assert (static["kind"], static["difference"], static["verdict"]) == ("methods", pytest.approx(5.0), "RigL ΔT=25 better")
    # seeds 0.1 apart on both sides: df = 4, half-width t(0.975, 4) · sqrt(2 · 0.01 / 3)
    assert (static["low"], static["high"]) == (pytest.approx(4.7733, abs=1e-3), pytest.approx(5.2267, abs=1e-3))
    assert found[("RigL 2× ΔT=25", "Pruning ΔT=25", 0.05)]["kind"] == "longer"
    grid = found[("RigL (ERK) α=0.5 ΔT=25", "RigL (ERK) ΔT=25 (reference)", 0.1)]
    assert grid["best"] and grid["difference"] == pytest.approx(0.5)
    assert not found[("RigL (ERK) ΔT=50", "RigL (ERK) ΔT=25 (reference)", 0.1)]["best"]
    # read with the paper's ΔT = 100 as the reference, no run is at it: nothing to compare but static's
    # and pruning's rows, which have no RigL at the reference either
    assert comparisons.compare(groups) == []


def test_report_writes_the_comparisons_and_one_csv_row_per_run(tmp_path):
    console = Console(file=io.StringIO(), width=400)
    result = report.make_report(findings_runs(tmp_path), console, reference_interval=25)
    printed = console.file.getvalue()
    assert re.search(r"RigL 2× ΔT=25 +│ Pruning ΔT=25 ", printed) and "95% interval (Welch)" in printed
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| RigL ΔT=25 | Static | 0.05 | 60.10 (3) | 55.10 (3) | +5.00 [+4.77, +5.23] | RigL ΔT=25 better |" \
        in markdown
    assert "| RigL (ERK) α=0.5 ΔT=25, best by validation | RigL (ERK) ΔT=25 (reference) | 0.1 |" in markdown
    with open(tmp_path / "comparisons.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result["comparisons"]) == 6
    with open(tmp_path / "runs.csv", newline="", encoding="utf-8") as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == result["runs"] == 3 * 9
    assert set(report.RUN_COLUMNS) >= {"method", "distribution", "density", "multiplier", "seed", "dataset",
                                       "model", "steps", "test_acc", "val_acc"}
    row = next(r for r in per_run if r["path"] == "grid-a0.5-dt25-s2")
    assert (row["method"], row["distribution"], row["seed"], row["steps"]) == ("rigl", "erk", "2", "87891")
    assert (float(row["test_acc"]), float(row["val_acc"]), float(row["drop_fraction"])) == (70.9, 71.0, 0.5)


# --- published.py -------------------------------------------------------------------------------


def test_the_transcription_has_every_row_of_the_reports_tables():
    cells = published.read()
    def rows(item):
        return {(c["method"], c["distribution"], c["multiplier"], c.get("origin")) for c in cells if c["item"] == item}
    assert len(rows("table2")) == 16 and len(rows("table3")) == 15  # with the dense baseline
    assert {c["density"] for c in cells if c["item"] in ("table2", "table3") and c["method"] != "dense"} == {0.1, 0.2}
    assert len([c for c in cells if c["item"] == "table1"]) == len([c for c in cells if c["item"] == "table1-paper"]) == 10
    assert len([c for c in cells if c["item"] == "table4-optimal"]) == 6
    for cell in cells:  # every accuracy a percentage, every std a spread, every key in our terms
        assert (cell["mean"] is None and "not legible" in cell["note"]) or 60 < cell["mean"] < 100, cell
        assert cell["std"] is None or 0 <= cell["std"] < 20, cell
        assert cell["method"] in get_args(Method) and cell["dataset"] in ("cifar10", "cifar100"), cell
    # the report contradicts itself: RigL at d = 0.2 is 92.6 in Table 2 and 92.9 in Table 5; both are kept
    both = [c["mean"] for c in cells if published.key_of(c) == ("cifar10", "rigl", "uniform", 1.0, 0.2, "")
            and c["item"] in ("table2", "table5")]
    assert both == [92.6, 92.9]


def test_our_rows_sit_beside_the_reports_and_only_full_length_ones_are_compared(tmp_path):
    full = {"batch_size": 128, "val_size": 5000}
    for seed, acc in enumerate([92.0, 92.5, 93.0]):
        fake_run(tmp_path / "t2", f"rigl-erk-s{seed}", "rigl", "erk", 0.1, seed, acc, train=full)
        fake_run(tmp_path / "t2", f"rigl-erk-a0.5-s{seed}", "rigl", "erk", 0.1, seed, acc, drop_fraction=0.5, train=full)
        fake_run(tmp_path / "t1", f"rigl-erk-s{seed}", "rigl", "erk", 0.1, seed, acc, train={**full, "val_size": 0})
        fake_run(tmp_path / "short", f"rigl-erk-s{seed}", "rigl", "erk", 0.1, seed, acc,
                 train={**full, "train_subset": 5000})
    report.make_report(tmp_path / "t2", Console(file=io.StringIO(), width=400))
    markdown = (tmp_path / "t2" / "report.md").read_text(encoding="utf-8")
    # Table 2's RigL (ERK) at d = 0.1 is 92.4 ± 0.06: ours 92.50 ± 0.50 over 3 seeds, +0.10, within noise
    assert "| RigL (ERK) | 0.1 | 92.50 ± 0.50 (3) | 92.4 ± 0.06 (table2) |  | +0.10 [" in markdown
    assert "| within noise |" in markdown and "α=0.5 | 0.1 |" not in markdown  # the grid point is not the report's row
    with open(tmp_path / "t2" / "report.csv", newline="", encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["drop_fraction"] == "0.3")
    assert (row["published_item"], float(row["published_mean"]), row["verdict"]) == ("table2", 92.4, "within noise")
    report.make_report(tmp_path / "t1", Console(file=io.StringIO(), width=400))
    # Table 1 prints no std: 92.50 − 93.2 = −0.70 over our three seeds alone, t(0.975, 2) · 0.50 / √3 = 1.24
    assert "| RigL (ERK) | 0.1 | 92.50 ± 0.50 (3) | 93.2 (table1) | 93.1 | -0.70 [-1.94, +0.54] | within noise |" \
        in (tmp_path / "t1" / "report.md").read_text(encoding="utf-8")
    for seed, acc in enumerate([46.0, 46.5, 47.0]):  # a shorter study's reference ΔT = 25 and a grid point
        for interval in (25, 50):
            fake_run(tmp_path / "short", f"rigl-erk-dt{interval}-s{seed}", "rigl", "erk", 0.1, seed, acc,
                     update_interval=interval, train={**full, "train_subset": 5000})
    printed = io.StringIO()
    report.make_report(tmp_path / "short", Console(file=printed, width=400), reference_interval=25)
    markdown = (tmp_path / "short" / "report.md").read_text(encoding="utf-8")
    assert report.SHORTER_CAPTION in markdown and "| 92.4 ± 0.06 (table2) |  |  | other budget |" in markdown
    assert "another budget" in printed.getvalue()
    beside = markdown.split(report.SHORTER_CAPTION)[1].split("Comparisons")[0]
    assert "| RigL (ERK) ΔT=25 | 0.1 | 46.50 ± 0.50 (3) | 92.4 ± 0.06 (table2) |" in beside
    assert beside.count("| RigL (ERK)") == 1  # ΔT = 50 and 100 are not the report's row here: not the reference


def test_both_readings_of_table_5s_restart_sit_beside_its_one_published_row(tmp_path):
    for seed, acc in enumerate([90.0, 90.5, 91.0]):
        for option, reading in (("masks_from", "masks"), ("densities_from", "densities")):
            run = fake_run(tmp_path, f"{reading}-s{seed}", "rigl", "uniform", 0.1, seed, acc,
                           train={"batch_size": 128, "val_size": 5000})
            config = json.loads((run / "config.json").read_text())
            config["derived_from"] = {option: {"path": f"/runs/sm-s{seed}", "method": "rigl-sm"}}
            (run / "config.json").write_text(json.dumps(config))
    report.make_report(tmp_path, Console(file=io.StringIO(), width=400))
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    for reading in ("from RigL-SM's masks", "at RigL-SM's densities"):  # Table 5: 90.3 ± 0.34
        assert f"| RigL {reading} | 0.1 | 90.50 ± 0.50 (3) | 90.3 ± 0.34 (table5) |" in markdown


def test_figure_1_is_drawn_in_panels_when_two_panels_have_lines(tmp_path):
    groups = report.aggregate(report.collect_runs(sweep(tmp_path)))  # RigL uniform and ERK at d = 0.1, 0.2
    drawn = figures.plot_accuracy_vs_density_panels(groups, tmp_path / "panels.png")
    assert drawn == tmp_path / "panels.png"
    assert_png(drawn)
    only_erk = [g for g in groups if g["distribution"] != "uniform"]
    assert figures.plot_accuracy_vs_density_panels(only_erk, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
