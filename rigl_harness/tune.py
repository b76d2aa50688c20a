"""`python rigl.py tune ROOT`: the report's α/ΔT search (Table 4) as Optuna studies that resume to exactly N trials and that many workers share."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import re
import time
import warnings
from pathlib import Path

from rigl import DROP_AND_GROW
from rigl_harness import runs
from train import start_run

REFERENCE = {"drop_fraction": 0.3, "update_interval": 100}
"""The paper's α and ΔT, enqueued as every study's first trial (the report's Table 4 reference)."""
ALPHA_STEP = 0.01
"""α is searched on a grid of 0.01 (the report's continuous [0.1, 0.6] to two decimals), so that
run directories have readable names and a point proposed twice reuses its runs."""
POLL_SECONDS = 5.0
"""How often a worker with nothing to ask looks again (another worker's trial may die)."""


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """The search: what a study is created with and must be resumed with (but `trials`)."""
    trials: int = 15
    """Finished trials the study must hold (the report: 15)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """The objective is the mean over these seeds of the final validation accuracy (the report: 0, 1, 2)."""
    alpha_range: tuple[float, float] = (0.1, 0.6)
    """α's bounds (the report: [0.1, 0.6])."""
    interval_range: tuple[int, int, int] = (50, 1000, 50)
    """ΔT's low, high and step (the report: 50 ... 1000 step 50)."""
    startup_trials: int = 5
    """TPE's random start-up trials, the reference included (the report had Optuna's 10 of 15)."""
    sampler_seed: int = 123
    """TPE's seed (the report: 123); trial k is sampled with sampler_seed + k."""

    def __post_init__(self) -> None:
        low, high = self.alpha_range
        start, stop, step = self.interval_range
        if self.trials < 1 or self.startup_trials < 1 or not self.seeds:
            raise ValueError("--trials and --startup-trials must be at least 1, and --seeds needs a seed")
        if not 0 < low <= REFERENCE["drop_fraction"] <= high < 1:
            raise ValueError(f"--alpha-range must lie in (0, 1) and contain the reference α = 0.3, got {low},{high}")
        if step < 1 or not start <= REFERENCE["update_interval"] <= stop or (100 - start) % step:
            raise ValueError(f"--interval-range LOW,HIGH,STEP must contain the reference ΔT = 100 on its "
                             f"grid, got {start},{stop},{step}")

    def space(self) -> dict:
        """What must agree when a study is resumed: the search space, the seeds, the sampler."""
        return {"alpha_range": list(self.alpha_range), "alpha_step": ALPHA_STEP,
                "interval_range": list(self.interval_range), "seeds": list(self.seeds),
                "sampler": sampler_settings(self, 0)}


def sampler_settings(settings: TuneSettings, seed_offset: int) -> dict:
    """Every TPE setting written out, so that an Optuna upgrade cannot change one silently.
    constant_liar: a running trial counts as a bad result, so concurrent workers spread out."""
    return {"n_startup_trials": settings.startup_trials, "n_ei_candidates": 24, "multivariate": True,
            "group": False, "constant_liar": True, "consider_prior": True, "prior_weight": 1.0,
            "consider_magic_clip": True, "consider_endpoints": False,
            "seed": settings.sampler_seed + seed_offset}


def make_sampler(settings: TuneSettings, trial_index: int):
    """TPE seeded for the trial about to be asked: a restarted worker continues the sequence
    instead of repeating the first proposals."""
    import optuna
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(**sampler_settings(settings, trial_index))


# ---------------------------------------------------------------------------------------------
# Storage, study and locks
# ---------------------------------------------------------------------------------------------


CREATION_RACES = ("already exists", "duplicate key", "UNIQUE constraint failed", "database is locked")
"""What a database answers a worker that creates a table or row another worker created a moment before."""
OPEN_ATTEMPTS = 8
"""How often a worker tries to open a database whose tables others are creating, a little later each time."""


def open_storage(root: Path, url: str | None, console):
    """ROOT/tune.journal by default (a torn last line repaired first); otherwise the RDB URL. Workers
    started together on an empty database race to create its tables: the losers try again; a bad
    URL is refused in one line."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url is None:
        from optuna.storages.journal import JournalFileBackend
        repair_journal(root / "tune.journal", console)
        return optuna.storages.JournalStorage(JournalFileBackend(str(root / "tune.journal")))
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as error:  # SQLAlchemy and the drivers raise many kinds, by what is wrong
            if attempt < OPEN_ATTEMPTS and any(words in str(error) for words in CREATION_RACES):
                time.sleep(0.1 * attempt * (1 + random.random()))
                continue
            raise runs.UsageError(f"--storage {hide_password(url)} cannot be opened: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def repair_journal(path: Path, console) -> None:
    """A journal whose last line was cut off (a crash or a full disk in the middle of an append):
    Optuna never applied that line, and would fail to read every line appended after it. Under
    Optuna's own journal lock, the torn bytes move to PATH.torn-TIME and the journal ends with its
    last whole line; a last line that is whole JSON and only lacks its newline gets it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    from optuna.storages.journal import JournalFileSymlinkLock
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        torn = data[cut:]
        try:
            json.loads(torn)
            whole = True
        except ValueError:
            whole = False
        if whole:
            with open(path, "ab") as handle:
                handle.write(b"\n")
            return
        kept = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        runs.atomic_write(kept, lambda handle: handle.write(torn))
        with open(path, "r+b") as handle:
            handle.truncate(cut)
            os.fsync(handle.fileno())
    finally:
        lock.release()
    console.print(f"{path}: its last line was cut off in the middle of a write ({len(torn)} bytes, never "
                  f"applied); moved it to {kept.name} and continued from the line before", highlight=False)


@contextlib.contextmanager
def storage_errors(url: str | None):
    """A database that fails or goes away mid-study (SQLAlchemy's errors, Optuna's storage error)
    ends the command in one line, exit code 2; the study is kept, and the same command continues it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError
    try:
        yield
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        cause = runs.chained(error, SQLAlchemyError) or error
        where = f"--storage {hide_password(url)}" if url else "the study's storage"
        raise runs.UsageError(f"{where} failed: {first_line(cause)}; the study is kept, run the same command "
                              f"again once the database is back") from None


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on PATH, waited for; released when the block ends or the process does."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def try_lock(path: Path):
    """The open, locked file, or None when another live process holds the lock."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def study_name(sparse_cfg) -> str:
    return f"{sparse_cfg.method}-{sparse_cfg.distribution}-d{sparse_cfg.density}"


PER_STUDY = ("method", "distribution", "density")
"""The fields that tell the studies of one ROOT apart; every other setting they share."""


def fixed_config(cfg, sparse_cfg) -> dict:
    """The settings every run of every trial shares: the run configuration at the reference point."""
    return runs.run_config(dataclasses.replace(cfg, seed=0),
                           dataclasses.replace(sparse_cfg, seed=0, **REFERENCE))


def check_settings(storage, name: str, config: dict, space: dict) -> None:
    """Refuse, naming the fields, a study on ROOT whose fixed settings (or, for the same study,
    whose search space, seeds or sampler) differ from the ones asked for."""
    import optuna
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        saved = summary.user_attrs.get("config")
        if saved is None:
            continue
        differences = [d for d in runs.config_differences(saved, config)
                       if summary.study_name == name or d.split(" ")[0] not in PER_STUDY]
        if summary.study_name == name:
            differences += [f"{key} (study has {summary.user_attrs['space'][key]!r}, asked for {value!r})"
                            for key, value in space.items() if summary.user_attrs["space"][key] != value]
        if differences:
            raise runs.UsageError(f"the study {summary.study_name} on this ROOT was started with other "
                                  f"settings: {'; '.join(differences)}; tune into another ROOT")


def open_study(storage, name: str, config: dict, space: dict):
    """The study NAME, created with the reference point as its first trial; a study of other
    settings refused. Called under ROOT's study lock."""
    import optuna
    check_settings(storage, name, config, space)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if "config" not in study.user_attrs:
        study.set_user_attr("config", config)
        study.set_user_attr("space", space)
        study.enqueue_trial(dict(REFERENCE), user_attrs={"reference": True})
    return study


def trial_lock(root: Path, trial) -> Path:
    """The lock a running trial's process holds: free while the trial is RUNNING means it died."""
    folder = root / ".tune-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"trial-{trial._trial_id}.lock"  # the storage's id: unique across its studies


def retry_dead_trials(study, root: Path, console) -> None:
    """Every RUNNING trial whose process died is failed and its point enqueued again, so its runs
    resume. Called under ROOT's study lock; a trial's own process holds its lock until it has told."""
    from optuna.trial import TrialState
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        handle = try_lock(trial_lock(root, trial))
        if handle is None:
            continue  # alive
        with handle:
            if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                fail_and_retry(study, trial)
                console.print(f"trial {trial.number}: its process died; failed, and its point asked again",
                              highlight=False)


def fail_and_retry(study, trial) -> None:
    """The trial FAILED (never left RUNNING) and its α and ΔT enqueued, to be asked next."""
    from optuna.trial import TrialState
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number,
                                                        "reference": trial.user_attrs.get("reference", False)})


# ---------------------------------------------------------------------------------------------
# The loop: ask under the lock, train the trial's runs, tell
# ---------------------------------------------------------------------------------------------


def tune(root: Path, cfg, sparse_cfg, settings: TuneSettings, storage_url: str | None, console) -> list[dict]:
    """Work on the study of (method, distribution, density) until it holds settings.trials finished
    trials; then Table 4 and the figures of every study on ROOT. Returns Table 4's rows.

    Counting the finished and running trials and asking for a new one happen under one lock
    (ROOT/.tune.lock), so workers never ask for more than N; each running trial holds a lock of its
    own, so a trial whose process died (its lock free) is failed and its point asked again."""
    if sparse_cfg.method not in DROP_AND_GROW:
        raise ValueError(f"tune searches α and ΔT, which {sparse_cfg.method} does not use: --method must be "
                         f"one of {', '.join(DROP_AND_GROW)}")
    if cfg.val_size < 1:
        raise ValueError("tune's objective is the validation accuracy: --val-size must be at least 1")
    root.mkdir(parents=True, exist_ok=True)
    name = study_name(sparse_cfg)
    with storage_errors(storage_url):
        with file_lock(root / ".tune.lock"):  # workers on one ROOT create the storage and the study in turn
            storage = open_storage(root, storage_url, console)
            study = open_study(storage, name, fixed_config(cfg, sparse_cfg), settings.space())
        console.print(f"study {name}: {settings.trials} trials × seeds {', '.join(map(str, settings.seeds))}",
                      highlight=False)
        while (asked := next_trial(study, root, settings, console)) != "finished":
            if asked is None:
                time.sleep(POLL_SECONDS)  # the last trials run elsewhere: wait in case one dies
                continue
            trial, handle = asked
            with handle:
                run_trial(study, trial, root, cfg, sparse_cfg, settings, console)
        from rigl_harness import tune_report
        with file_lock(root / ".tune.lock"):
            return tune_report.write_outputs(root, storage, console)


def next_trial(study, root: Path, settings: TuneSettings, console):
    """Under the study lock: dead trials retried, then "finished" when the study holds its
    trials, None when the missing ones are running elsewhere, else (a new trial, its held lock)."""
    from optuna.trial import TrialState
    with file_lock(root / ".tune.lock"):
        retry_dead_trials(study, root, console)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state == TrialState.COMPLETE for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if finished >= settings.trials:
            return "finished"
        if finished + running >= settings.trials:
            return None
        study.sampler = make_sampler(settings, len(trials))
        trial = study.ask()
        handle = try_lock(trial_lock(root, trial))
        suggest(trial, settings)  # inside the lock: TPE sees every trial asked before this one
        console.print(f"trial {trial.number} ({finished + running + 1} of {settings.trials}): "
                      f"α = {trial.params['drop_fraction']:g}, ΔT = {trial.params['update_interval']}; "
                      f"best so far {best_so_far(study)}", highlight=False)
        return trial, handle


def suggest(trial, settings: TuneSettings) -> tuple[float, int]:
    """α on its 0.01 grid and ΔT on its step, as the run directories name them."""
    low, high = settings.alpha_range
    alpha = trial.suggest_float("drop_fraction", low, high, step=ALPHA_STEP)
    interval = trial.suggest_int("update_interval", *settings.interval_range[:2], step=settings.interval_range[2])
    return round(alpha, 6), interval


def best_so_far(study) -> str:
    from optuna.trial import TrialState
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "none yet"
    best = max(done, key=lambda t: t.value)
    return f"{best.value:.2f}% (trial {best.number})"


def run_trial(study, trial, root: Path, cfg, sparse_cfg, settings: TuneSettings, console) -> None:
    """Train (or resume, or read) the trial's run of every seed and tell the mean final validation
    accuracy; any stop (an error, Ctrl-C) fails the trial and enqueues its point again."""
    alpha, interval = suggest(trial, settings)
    try:
        outs = trial_runs(root, sparse_cfg, cfg.multiplier, alpha, interval, settings.seeds)
        trial.set_user_attr("runs", [out.name for out in outs])
        for i, (seed, out) in enumerate(zip(settings.seeds, outs), 1):
            console.print(f"trial {trial.number}: run {i} of {len(outs)}, {out.name}", highlight=False)
            train_cell(dataclasses.replace(cfg, seed=seed),
                       dataclasses.replace(sparse_cfg, drop_fraction=alpha, update_interval=interval, seed=seed),
                       out, console)
        value = objective(outs)
    except BaseException:
        with file_lock(root / ".tune.lock"):
            fail_and_retry(study, trial)
        raise
    study.tell(trial, value)
    console.print(f"trial {trial.number}: validation accuracy {value:.2f}% (mean over {len(outs)} seeds); "
                  f"best so far {best_so_far(study)}", highlight=False)


def trial_runs(root: Path, sparse_cfg, multiplier: float, alpha: float, interval: int, seeds) -> list[Path]:
    """The run directories of one trial, named as sweep names its cells (runs.run_name)."""
    cell = {"method": sparse_cfg.method, "distribution": sparse_cfg.distribution,
            "density": sparse_cfg.density, "multiplier": multiplier,
            "drop_fraction": alpha, "update_interval": interval}
    return [root / runs.run_name({**cell, "seed": seed}, {"drop_fraction", "update_interval"})
            for seed in seeds]


def train_cell(cfg, sparse_cfg, out: Path, console) -> None:
    """The run finished, resumed or started; when another worker trains it (the same point asked
    twice), wait for that one instead of training it again."""
    while True:
        try:
            start_run(cfg, sparse_cfg, out, None, console)
            return
        except runs.RunBusy:
            time.sleep(POLL_SECONDS)


def objective(outs: list[Path]) -> float:
    """The mean over the trial's runs of the final validation accuracy, read from summary.json."""
    values = [runs.read_json(out / "summary.json")["final_val_acc"] for out in outs]
    if any(v is None for v in values):
        raise runs.UsageError(f"a run of {outs[0].parent} has no validation accuracy: tune needs --val-size > 0")
    return sum(values) / len(values)
