"""`python rigl.py reproduce` (rigl_harness/studies.py): every study of the report runs end to end at
its smallest size, draws its outputs, and is listed with its commands in docs/report-map.md."""

import io
import os
import re
import shutil

import pytest
from rich.console import Console

from helpers import REPO, one_line_error, run
from rigl_harness import cli, published, runs, studies, sweep
from rigl_harness.runs import UsageError
from rigl_harness.studies import SCALES, STUDIES

MAP = (REPO / "docs" / "report-map.md").read_text(encoding="utf-8")


def option_values(command: list[str]) -> dict[str, str]:
    """A printed study command's options and their values (every option of a study takes one)."""
    start = next((i for i, part in enumerate(command) if part.startswith("--")), len(command))
    return dict(zip(command[start::2], command[start + 1::2]))


def test_a_scale_adds_its_interval_only_where_a_command_sets_none_and_its_options_last():
    lr = studies.commands(STUDIES["lr"], SCALES["cpu"], "R")
    # the figure's own ΔT = 100, 200, 500, 750, in proportion to the CPU runs' ΔT = 4 (of the paper's 100)
    assert [option_values(c)["--update-intervals"] for c in lr[:4]] == ["4", "8", "20", "30"]
    assert lr[0].count("--update-intervals") == 1
    full = studies.commands(STUDIES["lr"], SCALES["full"], "R")
    assert [option_values(c)["--update-intervals"] for c in full[:4]] == ["100", "200", "500", "750"]
    table3 = studies.commands(STUDIES["table3"], SCALES["cpu"], "R")[0]
    assert table3[-len(SCALES["cpu"].options):] == list(SCALES["cpu"].options)  # the last --dataset wins
    assert table3.count("--dataset") == 2 and table3[table3.index("--dataset") + 1] == "cifar100"
    assert option_values(table3)["--update-intervals"] == "4" and option_values(table3)["--seeds"] == "0,1"
    table1 = studies.commands(STUDIES["table1"], SCALES["cpu"], "R")[0]
    assert table1.count("--val-size") == 1 and option_values(table1)["--val-size"] == "0"  # the study's own
    tune = studies.commands(STUDIES["table4"], SCALES["smoke"], "R")[0]
    assert (option_values(tune)["--trials"], option_values(tune)["--interval-range"]) == ("2", "1,100,1")
    smoke = studies.commands(STUDIES["lr"], SCALES["smoke"], "R")
    assert option_values(smoke[0])["--lrs"] == "0.1,0.05" and option_values(smoke[0])["--densities"] == "0.1"


@pytest.mark.parametrize("scale", ["full", "cpu", "smoke"])
def test_restarts_start_from_the_run_directories_the_sweep_writes(scale):
    found = studies.commands(STUDIES["table5"], SCALES[scale], "R")
    written = set()
    for command in (c for c in found if c[0] == "sweep"):  # CIFAR-10's and CIFAR-100's redistribution sweeps
        grid = {axis: option_values(command).get(f"--{axis.replace('_', '-')}", studies.default_of(field))
                for axis, (field, _) in sweep.AXES.items()}
        grid = sweep.parse_grid(grid)
        cells = sweep.cells(grid)
        written |= {f"{command[1]}/{runs.run_name(c, sweep.varied_fields(grid, cells))}" for c in cells}
    restarts = [option_values(c) for c in found if c[0] == "train"]
    per_reading = 2 * 2 * len(SCALES[scale].seeds) * (1 if scale == "smoke" else 2)  # two datasets
    for option in ("--masks-from", "--densities-from"):  # both readings of Table 5's restart
        sources = [r[option] for r in restarts if option in r]
        assert len(sources) == per_reading and all(s in written and "rigl-sm-" in s for s in sources)
        assert {s.split("/")[1] for s in sources} == {"redistribution", "redistribution-cifar100"}
    assert len({r["--out"] for r in restarts}) == len(restarts) == 2 * per_reading


def test_full_length_runs_and_gpu_hours_are_counted_from_the_commands():
    # Table 2 and Figure 1: at 1× uniform, dense once, 5 methods at 4 densities, Small-Dense and lottery at
    # 2 (pruning's cells at 0.1 and 0.2 are planned twice, for the figure and for lottery, and run once);
    # 4 ERK methods at 4 densities; Static, SET, RigL 2× at 4; SNFS 2× and RigL 2× (ERK) at 2; 3 seeds each
    ones, twos = 1 + 5 * 4 + 2 * 2 + 4 * 4, 3 * 4 + 2 + 2
    assert len(studies.full_runs(STUDIES["table2"])) == 3 * (ones + twos)
    assert studies.gpu_hours(STUDIES["table2"]) == 2.0 * 3 * ones + 4.0 * 3 * twos
    assert len(studies.full_runs(STUDIES["table4"])) == 6 * 15 * 3  # six studies of 15 trials × 3 seeds
    # the sweep and both restarts, on CIFAR-10 and on CIFAR-100 (6 GPU-hours a run)
    assert len(studies.full_runs(STUDIES["table5"])) == 2 * (3 * 12 + 2 * 3 * 4)
    assert studies.gpu_hours(STUDIES["table5"]) == (2.0 + 6.0) * (3 * 12 + 2 * 3 * 4)
    # the report's fixed-FLOPs figure has a WRN-22-2 and a ResNet-50 panel: uniform, ERK and
    # FLOP-matched ERK at three densities on CIFAR-10; uniform and FLOP-matched ERK on CIFAR-100
    fixed_flops = [dataset for dataset, _ in studies.full_runs(STUDIES["fixed-flops"])]
    assert (fixed_flops.count("cifar10"), fixed_flops.count("cifar100")) == (3 * 9, 3 * 6)


def test_a_root_holds_one_scale(tmp_path):
    (tmp_path / "reproduce.json").write_text('{"scale": "cpu"}')
    one_line_error(run("reproduce", "table1", str(tmp_path), "--scale", "smoke"),
                   f"{tmp_path} holds the cpu scale's runs (reproduce.json): reproduce --scale smoke into another ROOT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reproduce.json"]  # nothing ran


def test_the_laptop_scale_trains_on_the_real_data_and_refuses_to_start_without_it(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run("reproduce", "findings", str(tmp_path / "root"), "--scale", "laptop", "--data-dir", str(empty)),
                   f"cifar10 is not in {empty}/cifar-10-batches-py (no data_batch_1): give --data-dir")
    monkeypatch.setenv("RIGL_DATA_DIR", str(empty))  # the tests' folder, when no --data-dir is given
    message = one_line_error(run("reproduce", "table3", str(tmp_path / "root"), "--scale", "laptop"),
                             f"cifar100 is not in {empty}/cifar-100-python")
    assert f"data: {empty} (from RIGL_DATA_DIR)" in message
    assert not (tmp_path / "root").exists()  # refused before anything ran
    commands = studies.commands(STUDIES["findings"], SCALES["laptop"], "R")
    assert all("synthetic" not in c and option_values(c).get("--model") == "wrn-10-1" for c in commands[:-1])
    assert commands[-1] == ["report", "R/findings", "--reference-interval", "25"]


def test_the_findings_study_runs_three_seeds_of_every_compared_row_at_laptop_scale():
    rows = {}
    for step in STUDIES["findings"].steps:
        if isinstance(step, studies.Sweep):
            for cell in sweep.cells(step.grid(SCALES["laptop"])):
                key = tuple(cell[k] for k in ("method", "distribution", "density", "multiplier", "drop_fraction",
                                              "update_interval"))
                rows.setdefault(key, []).append(cell["seed"])
    assert all(seeds == [0, 1, 2] for seeds in rows.values())
    assert {m for m, d, *_ in rows if d == "uniform"} == {"static", "set", "snfs", "rigl", "pruning"}
    assert ("rigl", "uniform", 0.05, 2.0, 0.3, 25) in rows  # RigL 2× against pruning at its final density
    grid = {(a, dt) for m, dist, d, x, a, dt in rows if d == 0.1}
    assert grid == {(0.3, 25), (0.3, 50), (0.5, 25), (0.5, 50)}  # around the reference point (0.3, ΔT = 25)


@pytest.mark.parametrize("study, option, kind", [("table5", ["--densities-from", "x"], "restart"),
                                                 ("table1", ["--seed", "3"], "sweep"),
                                                 ("table4", ["--drop-fraction", "0.5"], "tune")])
def test_an_option_a_step_sets_itself_is_refused_before_anything_runs(tmp_path, study, option, kind):
    one_line_error(run("reproduce", study, str(tmp_path), "--scale", "smoke", *option),
                   f"{option[0]}: this study's {kind} steps set it for each run")
    assert not tmp_path.joinpath("reproduce.json").exists()


def test_the_report_map_lists_every_study_with_its_command_runs_hours_and_commands():
    rows = {m.group(1): m for m in re.finditer(
        r"^\| .*? \| `python rigl.py reproduce (\S+) runs` \| (\d+) \| (\d+) \|", MAP, flags=re.M)}
    assert set(rows) == set(STUDIES)
    for name, study in STUDIES.items():
        assert int(rows[name].group(2)) == len(studies.full_runs(study)), name
        assert int(rows[name].group(3)) == round(studies.gpu_hours(study)), name
        for command in studies.commands(study, SCALES["full"], "runs"):
            assert "python rigl.py " + " ".join(command) in MAP, (name, command)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One ROOT for every study, as a user would have it: Table 5 and the density evolution share runs."""
    return tmp_path_factory.mktemp("report")


@pytest.mark.parametrize("name", list(STUDIES))
def test_each_study_runs_end_to_end_at_its_smallest_size(name, root, monkeypatch):
    monkeypatch.setattr(cli.terminal, "make_console", lambda: Console(file=io.StringIO(), width=300))
    with pytest.raises(SystemExit) as done:
        cli.app(["reproduce", name, str(root), "--scale", "smoke"], prog_name="rigl.py")
    assert done.value.code == 0
    for pattern in STUDIES[name].outputs:
        assert list(root.glob(pattern)), (name, pattern)
    # the report's published value beside ours, marked as another budget (synthetic data, 4 steps)
    expected = {"table1": ("RigL (ERK)", "Pruning", "Static (ERK)", "| 94.6 (table1) | 94.1 |  | other budget |"),
                "table2": ("Small-Dense", "Lottery", "SNFS 2×", "| 93.4 ± 0.07 (table2) |"),
                "table3": ("RigL 3×", "Lottery", "| 74.7 ± 0.38 (table3) |"), "lr": "RigL (ERK)",
                "table5": ("from RigL-SM's masks", "at RigL-SM's densities", "other budget"),
                "density-evolution": "RigL-SM", "table4": "RigL",
                "fixed-flops": "at uniform's FLOPs", "rigl-struct": ("RigL-struct (ER)", "Small-Dense"),
                "findings": ("RigL 2× ΔT=1", "| Pruning ΔT=1 | 0.05 |", "no verdict: fewer than two seeds")}[name]
    tables = [p for pattern in STUDIES[name].outputs if pattern.endswith(".md") for p in root.glob(pattern)]
    expected = (expected,) if isinstance(expected, str) else expected
    assert all(e in p.read_text(encoding="utf-8") for p in tables for e in expected), name



def test_a_rerun_study_skips_its_finished_restarts_and_refuses_one_of_other_settings(root, monkeypatch, tmp_path):
    """The same reproduce command continues a study: finished `train` runs are skipped, neither
    refused (their --out already holds a run) nor retrained; a run of other settings is refused.
    (ROOT is the end-to-end test's, so after it this trains nothing.)"""
    def reproduce() -> str:
        printed = io.StringIO()
        monkeypatch.setattr(cli.terminal, "make_console", lambda: Console(file=printed, width=400))
        with pytest.raises(SystemExit) as done:
            cli.app(["reproduce", "table5", str(root), "--scale", "smoke"], prog_name="rigl.py")
        assert done.value.code == 0
        return printed.getvalue()
    reproduce()
    summaries = sorted(root.glob("redistribution*/restart/*/summary.json"))  # CIFAR-10's and CIFAR-100's
    written = {p: p.stat().st_mtime_ns for p in summaries}
    restarts = [line for line in reproduce().splitlines() if "python rigl.py train" in line]
    assert len(restarts) == len(summaries) == 8 and all(line.endswith(": done") for line in restarts)
    assert {p: p.stat().st_mtime_ns for p in summaries} == written
    command = next(c for c in studies.commands(STUDIES["table5"], SCALES["smoke"], str(root)) if c[0] == "train")
    other = tmp_path / "other"
    shutil.copytree(command[command.index("--out") + 1], other)
    (other / "config.json").write_text((other / "config.json").read_text().replace('"drop_fraction": 0.3', '"drop_fraction": 0.5'))
    command[command.index("--out") + 1] = str(other)
    with pytest.raises(UsageError, match="holds a run with other settings: drop_fraction"):
        cli.study_step(command)
    (other / "summary.json").unlink()  # stopped after its last checkpoint: continued, not restarted
    (other / "config.json").write_text((other / "config.json").read_text().replace('"drop_fraction": 0.5', '"drop_fraction": 0.3'))
    assert cli.study_step(command) == command + ["--resume"]


STUDY_ITEMS = {"table1": ("table1",), "table2": ("table2",), "table3": ("table3",), "table5": ("table5",),
               "fixed-flops": ("fixed-flops",)}
"""The studies whose rows the report publishes, and the items of published.csv they are held against."""
FIGURE_1 = ({(m, "uniform", 1.0) for m in ("static", "set", "rigl", "snfs", "pruning")}
            | {(m, "erk", 1.0) for m in ("static", "set", "rigl", "snfs")} | {(m, "uniform", 2.0) for m in ("static", "set", "rigl")})
"""The rows of Figure 1's three panels (Random, ERK, 2×) beyond Table 2, at d = 0.05, 0.1, 0.2 and 0.5
(RR's visualization/main_plots.py)."""


def planned_rows(study) -> set[tuple]:
    """Every row a study plans at full length, in published.csv's terms (published.key_of)."""
    found = set()
    for step in study.steps:
        if isinstance(step, studies.Sweep):
            origin = "at uniform's FLOPs" if dict(step.options).get("match_flops") else ""
            for cell in sweep.cells(step.grid(SCALES["full"])):
                unmasked = cell["method"] in ("dense", "small-dense")
                found.add((step.dataset(), cell["method"], "-" if unmasked else cell["distribution"],
                           cell["multiplier"], cell["density"], origin))
        elif isinstance(step, studies.Restart):
            found.add((step.source.dataset(), "rigl", step.distribution, 1.0, float(step.density), "restart"))
    return found


@pytest.mark.parametrize("name", list(STUDY_ITEMS))
def test_every_published_row_is_planned_and_every_planned_run_is_published_or_drawn(name):
    cells = [c for c in published.read() if c["item"] in STUDY_ITEMS[name]]
    planned, publishedrows = planned_rows(STUDIES[name]), {published.key_of(c) for c in cells}
    assert publishedrows - planned == set(), "published but not planned"
    beyond = planned - publishedrows
    if name in ("table2", "fixed-flops"):  # Figure 1's rows and densities (fixed-flops: RigL (ERK) at equal density)
        beyond = {row for row in beyond if row[1:4] not in FIGURE_1 or row[4] not in (0.05, 0.1, 0.2, 0.5)}
    assert beyond == set(), "planned but neither published nor drawn"


def test_table_4s_six_searches_are_planned():
    searched = {(dict(step.options)["distribution"], float(dict(step.options)["density"]))
                for step in STUDIES["table4"].steps if isinstance(step, studies.Tune)}
    assert searched == {(c["distribution"], c["density"]) for c in published.read() if c["item"] == "table4-optimal"}


@pytest.mark.parametrize("name", ["table2", "table3", "table5"])
def test_parts_of_a_study_add_up_to_it_under_the_same_names(name):
    study, full = STUDIES[name], SCALES["full"]
    whole = set(studies.run_dirs(study, full, "R"))
    by_density = [set(studies.run_dirs(study, full, "R", studies.Part(densities=(d,)))) for d in (0.05, 0.1, 0.2, 0.5)]
    by_seed = [set(studies.run_dirs(study, full, "R", studies.Part(seeds=(s,)))) for s in (0, 1, 2)]
    assert set().union(*by_density) == set().union(*by_seed) == whole and len(whole) == len(studies.full_runs(study))
    assert sum(map(len, by_seed)) == len(whole)  # no run in two parts
    rigl = studies.Part(methods=("rigl",), densities=(0.1,), seeds=(0,))
    commands = studies.commands(study, full, "R", part=rigl)
    assert all(option_values(c).get("--seeds", option_values(c).get("--seed")) == "0" for c in commands if c[0] != "report")
    assert set(studies.run_dirs(study, full, "R", rigl)) <= whole


def test_a_part_is_refused_in_one_line_where_it_cannot_be_run(tmp_path):
    one_line_error(run("reproduce", "table2", str(tmp_path), "--densities", "0.3"),
                   "the chosen part holds none of table2's runs at the full scale")
    one_line_error(run("reproduce", "table4", str(tmp_path), "--seeds", "0"),
                   "--seeds: a tune study's objective is the mean over all its seeds")
    one_line_error(run("reproduce", "table2", str(tmp_path), "--seeds", "one"), "--seeds takes comma-separated int")
    one_line_error(run("reproduce", "table2", str(tmp_path), "--methods", ","), "--methods names no value")
    assert not any(tmp_path.iterdir())


def test_a_part_runs_alone_and_the_study_counts_what_is_done(tmp_path, monkeypatch):
    def reproduce(*part) -> str:
        printed = io.StringIO()
        monkeypatch.setattr(cli.terminal, "make_console", lambda: Console(file=printed, width=400))
        with pytest.raises(SystemExit) as done:
            cli.app(["reproduce", "table1", str(tmp_path), "--scale", "smoke", *part], prog_name="rigl.py")
        assert done.value.code == 0
        return printed.getvalue()
    planned = studies.run_dirs(STUDIES["table1"], SCALES["smoke"], str(tmp_path))
    printed = reproduce("--methods", "dense")
    assert f"finished under {tmp_path}: 1 of {len(planned)} runs of the study (1 of 1 of this part)" in printed
    [only] = tmp_path.glob("table1/*/summary.json")
    assert only.parent.name.startswith("dense-")
    still = [os.path.relpath(d, tmp_path) for d in planned if not d.endswith(only.parent.name)]
    assert f"still to run: {', '.join(still)}\n" in printed  # what is missing, by name
    printed = reproduce()
    assert f"finished under {tmp_path}: {len(planned)} of {len(planned)} runs of the study" in printed
    assert "still to run" not in printed
