"""A sparse linear teacher: the smallest task on which growing by gradient beats a random mask.

Labels come from a linear teacher that reads only `informative` of its `inputs` inputs. The student
is one linear layer at density d, so a random mask holds few of the teacher's connections. RigL
grows where |∂L/∂w| is largest, which is at the informative inputs; SET grows at random; a static
mask keeps what it drew. The student trains with the README's loop, the four lines of RigL marked.

Run:  python teacher.py        (test accuracy of each method over five seeds, a few seconds each)
"""

from __future__ import annotations

import statistics
from typing import Annotated

import torch
import typer
from torch import nn

from rigl import Sparsity, SparsityConfig


def teacher_data(seed: int, inputs: int = 400, informative: int = 8, classes: int = 4,
                 samples: int = 6144) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I) and y = argmax(W x), where W is nonzero on `informative` random inputs only."""
    generator = torch.Generator().manual_seed(1000 + seed)
    teacher = torch.zeros(classes, inputs)
    teacher[:, torch.randperm(inputs, generator=generator)[:informative]] = torch.randn(
        classes, informative, generator=generator)
    x = torch.randn(samples, inputs, generator=generator)
    return x, (x @ teacher.T).argmax(1)


def train_student(method: str, seed: int, steps: int = 2000, density: float = 0.02,
                  update_interval: int = 10, batch_size: int = 64, test_size: int = 2048) -> float:
    """Test accuracy (%) of a linear student at `density` trained by `method` for `steps` steps."""
    x, y = teacher_data(seed)
    x_test, y_test, x, y = x[-test_size:], y[-test_size:], x[:-test_size], y[:-test_size]
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], int(y.max()) + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = SparsityConfig(method=method, density=density, update_interval=update_interval, seed=seed)
    sparsity = Sparsity(model, optimizer, config, total_steps=steps)      # RigL
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=order)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        if not sparsity.replaces_optimizer_step():                       # RigL
            optimizer.step()
        sparsity.apply_masks()                                           # RigL
    with torch.no_grad():
        return 100.0 * float((model(x_test).argmax(1) == y_test).float().mean())


def compare(methods: list[str], seeds: list[int], steps: int, density: float) -> list[dict]:
    """One row per method: the accuracy of every seed, their mean and sample std."""
    rows = []
    for method in methods:
        accuracies = [train_student(method, seed, steps, density) for seed in seeds]
        rows.append({"method": method, "accuracies": accuracies, "mean": statistics.fmean(accuracies),
                     "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0})
    return rows


def main(methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "static,set,rigl,snfs,dense",
         seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2,3,4",
         steps: Annotated[int, typer.Option(help="Training steps of each run.")] = 2000,
         density: Annotated[float, typer.Option(help="d of the student's one layer.")] = 0.02) -> None:
    """Test accuracy (%) of each method on the sparse linear teacher (chance: 25%)."""
    from rich.console import Console
    from rich.table import Table
    torch.set_num_threads(1)  # a 400×4 layer: threads cost more than they bring
    rows = compare([m.strip() for m in methods.split(",")], [int(s) for s in seeds.split(",")], steps, density)
    table = Table("method", "test accuracy (%), mean ± std", "per seed",
                  title=f"sparse linear teacher: 8 of 400 inputs informative, 4 classes, d = {density}, "
                        f"{steps} steps")
    for r in rows:
        table.add_row(r["method"], f"{r['mean']:.1f} ± {r['std']:.1f}", "  ".join(f"{a:.1f}" for a in r["accuracies"]))
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
