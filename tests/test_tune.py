"""`python rigl.py tune` (rigl_harness/tune.py): exactly N trials, resumed, shared by workers, refusals."""

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import postgres
from rigl_harness import comparisons
from helpers import REPO, cli, read_jsonl, run, wait_for_first_epoch

optuna = pytest.importorskip("optuna")

TUNE_SMOKE = ["--dataset", "synthetic", "--model", "wrn-10-1", "--train-subset", "256", "--val-size", "128",
              "--test-subset", "256", "--batch-size", "64", "--workers", "0", "--density", "0.2", "--distribution", "uniform"]
"""A tiny study: 4 steps an epoch, one epoch a run unless told."""
STUDY = "rigl-uniform-d0.2"


def tune_args(root, *extra):
    return [sys.executable, "rigl.py", "tune", str(root), *TUNE_SMOKE, *extra]


def load(root, storage=None):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = storage or JournalStorage(JournalFileBackend(str(root / "tune.journal")))
    return optuna.load_study(study_name=STUDY, storage=storage).get_trials()


def states(trials):
    return [t.state.name for t in trials]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 3-trial study over seeds 0 and 1, and what tune printed."""
    root = tmp_path_factory.mktemp("tune") / "root"
    result = subprocess.run(tune_args(root, "--trials", "3", "--seeds", "0,1", "--epochs", "1"), cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return root, result.stdout


def test_a_study_ends_with_exactly_n_trials_the_first_the_reference(study):
    root, printed = study
    trials = load(root)
    assert states(trials) == ["COMPLETE"] * 3
    assert trials[0].params == {"drop_fraction": 0.3, "update_interval": 100}
    assert "trial 2 (3 of 3)" in printed and "best so far" in printed
    again = cli("tune", str(root), *TUNE_SMOKE, "--trials", "3", "--seeds", "0,1", "--epochs", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: test acc" not in again.stdout and len(load(root)) == 3  # nothing more asked or trained


def test_the_objective_is_the_mean_final_validation_accuracy_of_the_runs(study):
    root, _ = study
    for trial in load(root):
        assert len(trial.user_attrs["runs"]) == 2
        finals = [json.loads((root / name / "summary.json").read_text())["final_val_acc"]
                  for name in trial.user_attrs["runs"]]
        assert trial.value == pytest.approx(statistics.fmean(finals))


def test_table_4_and_its_figures_are_written(study):
    root, printed = study
    table = (root / "tune.md").read_text()
    assert "| RigL | uniform | 0.2 | 3 | 2 |" in table and "reference val" in table
    assert table.splitlines()[-1].endswith("| 92.6 | 92.8 (0.448, 150) |")  # the report's Table 4 beside ours
    with open(root / "tune.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    def tests(trial):
        return [json.loads((root / name / "summary.json").read_text())["final_test_acc"]
                for name in trial.user_attrs["runs"]]
    reference = tests(load(root)[0])
    interval = comparisons.welch(tests(load(root)[int(row["best_trial"])]), reference) \
        if row["best_trial"] != "0" else None
    assert row["seeds"] == "2" and float(row["difference"]) == pytest.approx(
        float(row["best_test_mean"]) - statistics.fmean(reference))
    if interval:  # the best trial against the reference: the interval and verdict of comparisons.py
        assert float(row["low"]) == pytest.approx(interval["low"])
        assert row["verdict"] == comparisons.verdict(interval, "best", "reference")
    else:
        assert row["verdict"] == "the reference is the best trial"
    rows = (root / "tune.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("method,distribution,density,trials,reference_val_mean")
    best = max(load(root), key=lambda t: (t.value, -t.number))
    assert f",{best.number},{best.params['drop_fraction']},{best.params['update_interval']}," in rows[1]
    for figure in ("search", "history"):
        assert (root / "figures" / f"tune-{STUDY}-{figure}.png").stat().st_size > 5000
    assert cli("report", str(root)).returncode == 0  # the trials' runs are ordinary run directories


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.05"], "lr (run has 0.1, asked for 0.05)"),
    (["--epochs", "2"], "epochs (run has 1, asked for 2)"),
    (["--seeds", "0"], "seeds (study has [0, 1], asked for [0])"),
    (["--interval-range", "50,500,50"], "interval_range (study has [50, 1000, 50], asked for [50, 500, 50])"),
])
def test_other_fixed_settings_on_the_same_root_are_refused(study, extra, message):
    root, _ = study
    args = {"--seeds": "0,1", "--epochs": "1", **dict(zip(extra[::2], extra[1::2]))}
    result = cli("tune", str(root), *TUNE_SMOKE, "--trials", "4", *[x for kv in args.items() for x in kv])
    text = " ".join(result.stdout.split())
    assert result.returncode == 2 and f"the study {STUDY} on this ROOT was started with other settings" in text
    assert message in text, text
    assert len(load(root)) == 3


@pytest.mark.parametrize("args, message", [
    (["--storage", "nonsense://nowhere"], "--storage nonsense://nowhere cannot be opened"),
    (["--storage", "postgresql://me:secret@127.0.0.1:9/db"], "--storage postgresql://me:***@127.0.0.1:9/db cannot be opened"),
    (["--seed", "3"], "tune sets --seed for each run"),
    (["--alpha-range", "0.4,0.6"], "--alpha-range must lie in (0, 1) and contain the reference α = 0.3"),
    (["--method", "static"], "tune searches α and ΔT, which static does not use"),
    (["--val-size", "0"], "--val-size must be at least 1"),
])
def test_bad_tune_options_get_one_line(tmp_path, args, message):
    result = run("tune", str(tmp_path / "root"), *TUNE_SMOKE, *args)
    assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stdout


def test_a_killed_study_resumes_its_interrupted_trial_and_ends_with_exactly_n(tmp_path):
    root = tmp_path / "root"
    args = tune_args(root, "--trials", "3", "--seeds", "0", "--epochs", "2")
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    interrupted = root / "rigl-uniform-d0.2-x1.0-a0.3-dt100-s0"  # the reference, trial 0
    wait_for_first_epoch(process, interrupted)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert states(load(root)) == ["RUNNING"]  # what the killed process left
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    trials = load(root)
    assert states(trials) == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert "trial 0: its process died; failed, and its point asked again" in again.stdout
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert f"resumed {interrupted} at epoch 1" in " ".join(again.stdout.split())
    assert [r["epoch"] for r in read_jsonl(interrupted / "metrics.jsonl")] == [1, 2]
    assert "| RigL | uniform | 0.2 | 3 |" in (root / "tune.md").read_text()  # the retry is the reference


def run_workers(root, *extra, workers=2):
    """`workers` tune processes started together on ROOT; their outputs."""
    workers = [subprocess.Popen(tune_args(root, *extra), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:] + err
    return [out for out, _ in outputs]


def check_shared_study(root, outputs, trials_wanted, storage=None):
    """N finished trials, none running, each asked by one worker, no run trained twice."""
    trials = load(root, storage)
    assert states(trials) == ["COMPLETE"] * trials_wanted
    for trial in trials:
        assert sum(f"trial {trial.number} (" in out for out in outputs) == 1
    trained = sum(out.count("done: test acc") for out in outputs)
    run_dirs = {name for t in trials for name in t.user_attrs["runs"]}
    assert trained == len(run_dirs)
    assert all(len(read_jsonl(root / name / "metrics.jsonl")) == 1 for name in run_dirs)
    assert all(out.count("| RigL | uniform | 0.2 |") == 1 for out in outputs)  # each ends with Table 4


POSTGRES = os.environ.get("RIGL_TEST_POSTGRES_URL")


@pytest.fixture
def empty_postgres():
    """RIGL_TEST_POSTGRES_URL's database (.ci/run starts a throwaway server), emptied: no table."""
    if not POSTGRES:
        pytest.skip("set RIGL_TEST_POSTGRES_URL=postgresql+psycopg2://user:password@host/db (a database the "
                    "tests may empty) to test tune's workers against PostgreSQL; .ci/run starts one")
    import sqlalchemy
    engine = sqlalchemy.create_engine(POSTGRES)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return POSTGRES


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_three_workers_started_together_on_an_empty_storage_join_one_study(tmp_path, kind, request):
    """No worker loses the race to create the storage's tables or the study: all three join it,
    and it ends with exactly N trials."""
    root = tmp_path / "root"
    url = {"journal": None, "sqlite": f"sqlite:///{tmp_path / 'tune.db'}",
           "postgresql": request.getfixturevalue("empty_postgres") if kind == "postgresql" else None}[kind]
    extra = ("--storage", url) if url else ()
    outputs = run_workers(root, "--trials", "3", "--seeds", "0", "--epochs", "1", *extra, workers=3)
    check_shared_study(root, outputs, 3, optuna.storages.RDBStorage(url) if url else None)
    assert (root / "tune.journal").exists() == (url is None)


@pytest.mark.parametrize("repaired", [True, False], ids=["cut-mid-line", "only-its-newline-missing"])
def test_a_torn_journal_tail_is_set_aside_and_the_study_continues(study, tmp_path, repaired):
    """A crash or a full disk in the middle of an append leaves a last line cut off: it moves to
    tune.journal.torn-TIME (nothing is thrown away) and the study reads on; a whole last line that
    only lacks its newline gets one. Never appended to as it is, which would make every later line
    unreadable."""
    root = tmp_path / "root"
    shutil.copytree(study[0], root)
    journal = root / "tune.journal"
    whole = journal.read_bytes()
    tail = b'{"op_code": 4, "worker_id": "w", "study_id"'
    journal.write_bytes(whole + tail if repaired else whole[:-1])
    result = subprocess.run(tune_args(root, "--trials", "3", "--seeds", "0,1", "--epochs", "1"), cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    torn = list(root.glob("tune.journal.torn-*"))
    if repaired:
        assert "its last line was cut off in the middle of a write" in " ".join(result.stdout.split())
        assert journal.read_bytes().startswith(whole) and [p.read_bytes() for p in torn] == [tail]
    else:
        assert journal.read_bytes().startswith(whole) and not torn
    assert states(load(root)) == ["COMPLETE"] * 3


@pytest.mark.skipif(postgres.binaries() is None, reason="PostgreSQL's initdb and pg_ctl are not installed")
def test_a_database_that_goes_away_ends_tune_in_one_line_and_the_same_command_continues(tmp_path):
    """The server stops while a trial trains: the worker ends in one line (exit 2, no traceback);
    started again, the same command fails the trial whose process died, asks its point again and
    ends with exactly N trials."""
    server = Path(tempfile.mkdtemp(prefix="rigl-postgres-"))  # a folder the server's user may enter
    url = postgres.start(server)
    root = tmp_path / "root"
    args = tune_args(root, "--trials", "2", "--seeds", "0", "--epochs", "2", "--storage", url)
    try:
        worker = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_first_epoch(worker, root / "rigl-uniform-d0.2-x1.0-a0.3-dt100-s0")
        postgres.stop(server)
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 2, out[-2000:] + err
        assert "Traceback" not in out + err
        assert re.search(r"error: --storage postgresql\+psycopg2://postgres@/rigl_test\?host=\S+ failed: .*; "
                         r"the study is kept, run the same command again once the database is back", " ".join(out.split()))
        postgres.start(server)
        again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
        trials = load(root, optuna.storages.RDBStorage(url))
        assert states(trials) == ["FAIL", "COMPLETE", "COMPLETE"]
        assert "trial 0: its process died; failed, and its point asked again" in again.stdout
    finally:
        with contextlib.suppress(RuntimeError):
            postgres.stop(server)
        shutil.rmtree(server, ignore_errors=True)


def test_the_objective_reads_the_final_not_the_best_validation_accuracy(tmp_path):
    from rigl_harness import tune
    outs = [tmp_path / "s0", tmp_path / "s1"]
    for out, (final, best) in zip(outs, [(40.0, 55.0), (50.0, 60.0)]):
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"final_val_acc": final, "best_val_acc": best,
                                                      "final_test_acc": 99.0}))
    assert tune.objective(outs) == 45.0


def test_each_trial_is_sampled_afresh_so_a_restart_does_not_repeat_points(tmp_path):
    """Every ask builds its sampler as a restarted worker does; the random start-up points still
    differ from one another, and the first point is the reference."""
    from rich.console import Console

    from rigl_harness import tune
    settings = tune.TuneSettings(trials=6, startup_trials=6)
    study = tune.open_study(optuna.storages.InMemoryStorage(), STUDY, {"train": {}, "sparsity": {}},
                            settings.space())
    points = []
    for _ in range(6):
        trial, handle = tune.next_trial(study, tmp_path, settings, Console(file=open(os.devnull, "w")))
        handle.close()
        points.append(tuple(trial.params.values()))
        study.tell(trial, 50.0)
    assert points[0] == (0.3, 100) and len(set(points)) == 6
    assert tune.next_trial(study, tmp_path, settings, Console(file=open(os.devnull, "w"))) == "finished"


def test_one_seed_shows_no_spread_in_table_4():
    from rigl_harness import tune_report
    assert tune_report.pm({"best_val_mean": 61.25, "best_val_std": 0.0, "best_val_values": [61.25]}, "best_val") == "61.25"
    assert tune_report.pm({"best_val_mean": 61.0, "best_val_std": 0.5, "best_val_values": [60.5, 61.5]},
                          "best_val") == "61.00 ± 0.50"
