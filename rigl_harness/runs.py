"""A run directory: config.json, init.pt, checkpoint.pt, metrics.jsonl, densities.jsonl, summary.json.

Every file is replaced atomically (written beside it, then renamed), so a kill never leaves a
broken one; a killed run continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

from rigl import UNMASKED


def run_config(cfg, sparse_cfg) -> dict:
    """config.json: both configurations (tuples as JSON lists), the torch version, the git commit."""
    return json.loads(json.dumps({"train": asdict(cfg), "sparsity": asdict(sparse_cfg),
                                  "torch": torch.__version__, "git_commit": git_commit()}))


class UsageError(ValueError):
    """A problem the user can fix from the command line; printed without a traceback."""


class RunBusy(UsageError):
    """Another live process holds the run directory's lock."""


class Diverged(UsageError):
    """The training loss became NaN or infinite: the run stops, its last good checkpoint kept."""


class WriteFailed(UsageError):
    """A file could not be written (a full disk, a folder it may not write): named in one line."""


def atomic_write(path: Path, write) -> None:
    """The one way every file is written: `write(handle)` fills a temporary file of this process
    beside `path`, which then replaces it, so that a kill or a full disk never leaves a broken file
    (the previous one stays until the new one is whole). A failed write, an OSError or torch's
    RuntimeError around one, becomes WriteFailed naming `path`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two writers of one file never share it
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        stop = chained(error, KeyboardInterrupt)  # Ctrl-C or SIGTERM inside torch.save's writes
        if stop is not None:
            raise stop from None
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise WriteFailed(f"cannot write {path}: {write_failure(error)}{kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


def chained(error: BaseException, kind: type) -> BaseException | None:
    """The first exception of `kind` in the chain of `error` (itself, its cause or its context)."""
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


def write_failure(error: BaseException) -> str:
    """Why a write failed: the operating system's words (ENOSPC, EACCES, EROFS, ...) wherever in
    the exception's chain they are (torch.save raises RuntimeError with the OSError as context)."""
    cause = chained(error, OSError)
    if cause is not None and cause.strerror:
        return cause.strerror
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_json(path: Path):
    """A JSON file of a run directory; a damaged one is named in a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UsageError(f"{path} is not readable JSON ({error})") from None


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def git_commit() -> str | None:
    """The commit of the code that trains, saved with the configuration; None outside git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


MAY_DIFFER = ("device", "data_dir", "workers")
"""Settings that do not change a run's numbers: where it runs and where its data lie."""


def may_differ(train: dict) -> tuple[str, ...]:
    """MAY_DIFFER of a run's train section. On ImageNet --workers changes the numbers: each
    DataLoader worker augments with its own random stream, so 1 and 2 workers train differently."""
    return MAY_DIFFER if train.get("dataset") != "imagenet" else tuple(k for k in MAY_DIFFER if k != "workers")


def config_differences(saved: dict, now: dict) -> list[str]:
    """Fields that differ between a saved run and the one asked for, but those that may_differ; a
    field the saved run lacks differs."""
    free = may_differ(now["train"])
    return [f"{key} (run has {saved.get(section, {}).get(key)!r}, asked for {value!r})"
            for section in ("train", "sparsity") for key, value in now[section].items()
            if key not in free and saved.get(section, {}).get(key) != value]


def read_config(out: Path) -> tuple[dict, dict]:
    """The train and sparsity sections of OUT/config.json; a file without them is named."""
    path = Path(out) / "config.json"
    config = read_json(path)
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("train", "sparsity")):
        raise UsageError(f"{path} is not a run's configuration (no train and sparsity sections)")
    return config["train"], config["sparsity"]


@contextlib.contextmanager
def locked(out: Path):
    """Hold an exclusive lock on OUT/.lock while a process writes the run: a second writer is
    refused. The operating system releases it when the process ends, however it ends."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a run directory")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"{out} is being written by another process; wait for it to finish or "
                              f"choose another --out") from None
            yield
    except BaseException:  # a start that failed (no data, a bad option) leaves no directory behind
        if made and {p.name for p in out.iterdir()} <= {".lock"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def run_name(cell: dict, shown: set[str]) -> str:
    """A run directory's name, the one scheme of every command (train's default --out under
    runs/<dataset>-<model>-, a sweep's cells, tune's trials, a study's restarts' sources):
    rigl-erk-d0.1-x1.0-s0; α (-a) and ΔT (-dt) when `shown`, the learning rate when one is set."""
    name = cell["method"] if cell["method"] == "dense" else \
        f"{cell['method']}-{cell['distribution']}-d{cell['density']}"
    name += f"-x{cell['multiplier']}"
    if "drop_fraction" in shown:
        name += f"-a{cell['drop_fraction']}"
    if "update_interval" in shown:
        name += f"-dt{cell['update_interval']}"
    if cell.get("lr") is not None:
        name += f"-lr{cell['lr']}"
    return name + f"-s{cell['seed']}"


def held_by_another(out: Path) -> bool:
    """Whether another live process holds OUT's run lock: it is writing that run now."""
    if not (out / ".lock").is_file():
        return False
    with open(out / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def check_out_dir(out: Path, config: dict, resume: bool) -> None:
    """A new run needs a directory that holds no run (or the same settings' run that never finished
    an epoch); --resume needs a checkpoint of the same settings. Anything else is refused, never
    overwritten."""
    found = {p.name for p in out.iterdir()} - {".lock"} if out.is_dir() else set()
    if found and "config.json" not in found:
        raise UsageError(f"--out {out} holds files that are not a run ({', '.join(sorted(found)[:3])}): "
                         f"choose another --out")
    if resume and "checkpoint.pt" not in found:
        raise UsageError(f"--resume: there is no checkpoint.pt in {out} to resume")
    if not resume and "checkpoint.pt" in found:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    differences = config_differences(read_json(out / "config.json"), config) if found else []
    if differences:
        raise UsageError(("refusing to resume " if resume else "refusing to overwrite ") + f"{out}, a run "
                         f"with a different configuration: " + "; ".join(differences))


def start(out: Path, config: dict, initial_weights: dict) -> None:
    """A new run directory: the resolved configuration and the initial weights (for lottery)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    atomic_write(out / "init.pt", lambda handle: torch.save(initial_weights, handle))


def save_epoch(out: Path, checkpoint: dict, metrics: list[dict], densities: list[dict]) -> None:
    """After every epoch: checkpoint.pt, metrics.jsonl and densities.jsonl."""
    atomic_write(out / "checkpoint.pt", lambda handle: torch.save(checkpoint, handle))
    save_records(out, metrics, densities)


def save_records(out: Path, metrics: list[dict], densities: list[dict]) -> None:
    """metrics.jsonl and densities.jsonl, strict JSON: a number that is not finite is refused."""
    for name, records in (("metrics.jsonl", metrics), ("densities.jsonl", densities)):
        write_text(out / name, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def load_torch(path: Path, what: str, advice: str, device: torch.device | str = "cpu"):
    """A torch file of a run directory; a missing, truncated, empty or random one is named in a
    one-line error that says it is not `what`, and `advice`."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises EOFError, UnpicklingError, RuntimeError, ... by damage
        raise UsageError(f"{path} is damaged or not {what} ({type(error).__name__}); {advice}") from None


def load_checkpoint(out: Path, device: torch.device) -> dict:
    """checkpoint.pt; a truncated, empty, random or foreign file is named in a one-line error."""
    path = out / "checkpoint.pt"
    state = load_torch(path, "a checkpoint", "remove it to start over, or choose another --out", device)
    if not isinstance(state, dict) or not isinstance(state.get("sparsity"), dict):
        raise UsageError(f"{path} is not a checkpoint of this program; choose another --out")
    return state


def read_source(source: Path, option: str, model: str, dataset: str, files: tuple[str, ...],
                finished: bool = True) -> tuple[dict, dict]:
    """The train and sparsity sections of a run that another starts from (--masks-from,
    --densities-from, --init-from): it must hold `files`, have finished (summary.json) when its
    final state is asked for, and have trained the same model on the same dataset."""
    missing = [n for n in ("config.json", *files) if not (source / n).is_file()]
    if missing:
        raise UsageError(f"{option} {source}: expected a run's {', '.join(missing)} there")
    if finished and not (source / "summary.json").is_file():
        raise UsageError(f"{option} {source} has not finished (no summary.json): its masks are not "
                         f"the final ones; finish it with --resume first")
    train, sparse = read_config(source)
    if (train.get("model"), train.get("dataset")) != (model, dataset):
        raise UsageError(f"{option} {source} trained {train.get('model')} on {train.get('dataset')}, "
                         f"not {model} on {dataset}")
    return train, sparse


def check_source_sparsity(source: Path, option: str, sparse: dict, sparse_cfg) -> None:
    """A run whose masks or densities another starts from: sparse, at the --density and
    --distribution asked for (the new run's row in the report names them)."""
    if sparse.get("method") in UNMASKED:
        raise UsageError(f"{option} {source} has no masks (method {sparse.get('method')} trains dense): "
                         f"it needs a sparse run")
    if sparse.get("density") != sparse_cfg.density:
        raise UsageError(f"{option} {source} was trained at density {sparse.get('density')}, not the "
                         f"--density {sparse_cfg.density} asked for: the run would train at its source's density")
    if sparse.get("distribution") != sparse_cfg.distribution:
        raise UsageError(f"{option} {source} started from distribution {sparse.get('distribution')}, not the "
                         f"--distribution {sparse_cfg.distribution} asked for: a restart keeps its source's")


def read_final_masks(source: Path, model: str, dataset: str, sparse_cfg) -> tuple[dict, float]:
    """--masks-from: the final masks (checkpoint.pt) of a finished sparse run of the same model,
    dataset, density and distribution, and their density by its summary.json, which they must have."""
    _, sparse = read_source(source, "--masks-from", model, dataset, ("checkpoint.pt",))
    check_source_sparsity(source, "--masks-from", sparse, sparse_cfg)
    state = load_torch(source / "checkpoint.pt", "a checkpoint", "choose another --masks-from")
    masks = state.get("sparsity", {}).get("masks") if isinstance(state, dict) else None
    if not masks or not isinstance(masks, dict):
        raise UsageError(f"--masks-from {source} has no masks (method {sparse.get('method')} trains dense): "
                         f"it needs a sparse run")
    final = read_json(source / "summary.json")
    if not isinstance(final, dict) or not isinstance(final.get("density"), float):
        raise UsageError(f"{source / 'summary.json'} is not a run's summary (no density)")
    return masks, final["density"]


def read_final_densities(source: Path, model: str, dataset: str, sparse_cfg) -> dict[str, float]:
    """--densities-from: every masked layer's final density (summary.json's layers, active / total)
    of a finished sparse run of the same model, dataset, density and distribution."""
    _, sparse = read_source(source, "--densities-from", model, dataset, ())
    check_source_sparsity(source, "--densities-from", sparse, sparse_cfg)
    final = read_json(source / "summary.json")
    layers = final.get("layers") if isinstance(final, dict) else None
    if not isinstance(layers, list) or not layers or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("density"), (int, float))
            for r in layers):
        raise UsageError(f"{source / 'summary.json'} is not a run's summary (no layers with densities)")
    return {r["name"]: float(r["density"]) for r in layers}


def read_init(source: Path, model: str, dataset: str) -> dict:
    """--init-from: the initial weights (init.pt, written when a run starts) of a run of the same
    model on the same dataset; it need not have finished."""
    read_source(source, "--init-from", model, dataset, ("init.pt",), finished=False)
    return load_torch(source / "init.pt", "initial weights", "choose another --init-from")


def source_record(source: Path, option: str, model: str, dataset: str) -> dict:
    """What config.json records of a run another starts from: its absolute path, and the method,
    distribution and density it trained with (the report labels the new run by them)."""
    _, sparse = read_source(source, option, model, dataset, (), finished=False)
    return {"path": str(source.resolve()), "method": sparse.get("method"),
            "distribution": sparse.get("distribution"), "density": sparse.get("density")}


def save_final(out: Path, summary: dict, metrics: list[dict], densities: list[dict]) -> None:
    """summary.json, written after the records it summarises (metrics.jsonl and densities.jsonl),
    so that no summary is ever without them."""
    save_records(out, metrics, densities)
    write_json(out / "summary.json", summary)
