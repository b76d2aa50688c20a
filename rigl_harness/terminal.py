"""What a run shows in the terminal: its configuration and layer table, progress, one line an epoch."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flops import PAPER_FLOPS_PER_MAC
from rigl_harness import distributed


def make_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)  # pipes get whole lines


def silent_console() -> Console:
    """What the ranks but rank 0 print to under torchrun: nothing."""
    return Console(file=io.StringIO())


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's stop), raised where the program is, as Ctrl-C is."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def user_errors(console, interrupted=lambda: "interrupted"):
    """A problem the user can fix ends the command with one line and exit code 2, not a traceback:
    ValueError (and its kinds runs.UsageError and data.DataUnavailable), and OSError (a full disk,
    a folder it may not write). Ctrl-C and SIGTERM say what `interrupted()` returns, with exit code
    130 and 143 (128 + the signal's number, as the shell reports them)."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except ValueError as error:
        console.print(f"[red]error:[/] {one_line(str(error))}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        console.print(f"[red]error:[/] {error.strerror or error}{where}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except KeyboardInterrupt as stop:
        console.print(interrupted())
        raise SystemExit(128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.close()


def one_line(message: str) -> str:
    """An error raised in a DataLoader worker comes wrapped in its traceback: keep its last line."""
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


def print_start(run, config: dict, console) -> None:
    """The resolved configuration and the per-layer table (shape, density, active weights, FLOPs
    per sample), once at the start of a run."""
    console.print(f"[bold]config[/] {json.dumps(config['train'])}")
    console.print(f"[bold]sparsity[/] {json.dumps(config['sparsity'])}")
    console.print(f"device {run.device}, {run.data.num_train:,} training images, "
                  f"{run.steps_per_epoch} steps/epoch × {run.epochs} epochs, T_end step {run.sparsity.t_end}")
    table = Table("layer", "shape", "density", "active", "weights", "dense FLOPs", "sparse FLOPs",
                  title="masked layers (FLOPs per sample, multiplies and adds counted separately)")
    for r in run.sparsity.layer_stats():
        dense = PAPER_FLOPS_PER_MAC * run.dense_macs[r["name"]]
        table.add_row(r["name"], str(tuple(r["shape"])), f"{r['density']:.4f}", f"{r['active']:,}",
                      f"{r['total']:,}", f"{dense:.3e}", f"{dense * r['density']:.3e}")
    total = run.sparsity.total_row()
    table.add_row("total", "", f"{total['density']:.4f}", f"{total['active']:,}", f"{total['total']:,}",
                  f"{run.f_dense:.3e}", f"{run.f_sparse:.3e}")
    console.print(table)


PLAIN_EVERY = 60.0
"""Seconds between the plain progress lines that a log or a pipe (not a terminal) gets in an epoch."""


@contextlib.contextmanager
def epoch_progress(run, epoch: int, console):
    """A transient progress bar over the steps of epoch `epoch` (from 1) in a terminal, plain lines
    every PLAIN_EVERY seconds elsewhere; yields show(loss), called once a step (it reads the loss off
    the device only when it redraws, every 20 steps, or prints)."""
    if not console.is_terminal:
        yield plain_progress(run, epoch, console)
        return
    started, step_in_epoch = time.perf_counter(), 0
    with Progress(TextColumn(f"epoch {epoch}/{run.epochs}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps  {task.fields[status]}"),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("train", total=run.steps_per_epoch, status="")

        def show(loss) -> None:
            nonlocal step_in_epoch
            step_in_epoch += 1
            if step_in_epoch % 20 == 1 or step_in_epoch == run.steps_per_epoch:
                images = step_in_epoch * run.cfg.accumulate * run.cfg.batch_size
                status = (f"loss {loss.item() * run.cfg.accumulate:.3f}  "
                          f"{images / (time.perf_counter() - started):,.0f} img/s")
                progress.update(task, completed=step_in_epoch, status=status)
        yield show


def plain_progress(run, epoch: int, console):
    """show(loss) for a log: a line with the step, the loss, images/s and the epoch's time left,
    every PLAIN_EVERY seconds (none in an epoch shorter than that: its metrics line follows)."""
    started = last = time.perf_counter()
    step_in_epoch = 0

    def show(loss) -> None:
        nonlocal step_in_epoch, last
        step_in_epoch += 1
        now = time.perf_counter()
        if now - last < PLAIN_EVERY or step_in_epoch == run.steps_per_epoch:
            return
        last, rate = now, step_in_epoch / (now - started)
        images = step_in_epoch * run.cfg.accumulate * run.cfg.batch_size
        console.print(f"epoch {epoch}/{run.epochs}  step {step_in_epoch}/{run.steps_per_epoch}  "
                      f"loss {loss.item() * run.cfg.accumulate:.3f}  {images / (now - started):,.0f} img/s  "
                      f"epoch time left {(run.steps_per_epoch - step_in_epoch) / rate:,.0f}s", highlight=False)
    return show


def format_record(r: dict) -> str:
    """One line per epoch with the same keys every time (docs/run-directories.md, "Metrics")."""
    val = "  n/a" if r["val_acc"] is None else f"{r['val_acc']:5.2f}"
    loss = "   n/a" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
    explored = "   n/a" if r["explored"] is None else f"{r['explored']:.4f}"
    return (f"epoch {r['epoch']:>4}  step {r['step']:>7}  lr {r['lr']:.5f}  train loss "
            f"{loss}  val acc {val}  test acc {r['test_acc']:5.2f}  drop fraction "
            f"{r['drop_fraction']:.4f}  regrown {r['regrown']:>7}  explored {explored}  "
            f"inference flops {r['inference_flops_ratio']:.4f}  elapsed {r['elapsed']:8.1f}s  "
            f"eval {r['eval_elapsed']:7.1f}s")


def print_done(summary: dict, out, console) -> None:
    console.print(f"done: test acc {summary['final_test_acc']:.2f}%, best val acc "
                  f"{summary['best_val_acc']}, {summary['steps']} steps, {summary['wall_time']:.0f}s of training "
                  f"and {summary['eval_time']:.0f}s of evaluation; "
                  f"training FLOPs {summary['train_flops']:.3e} ({summary['train_flops_ratio']:.3f}× dense 1×), "
                  f"inference FLOPs {summary['inference_flops']:.3e} ({summary['inference_flops_ratio']:.3f}× "
                  f"dense), paper convention; results in {out}", soft_wrap=True, highlight=False)
