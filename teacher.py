"""A sparse linear teacher: the smallest task on which growing by gradient beats a random mask.

Labels come from a linear teacher that reads only `informative` of its `inputs` inputs. The student
is one linear layer at density d, so a random mask holds few of the teacher's connections. RigL
grows where |∂L/∂w| is largest, which is at the informative inputs; SET grows at random; a static
mask keeps what it drew. The student trains with the README's loop, the three lines of RigL marked.
It needs torch alone.

Run:  python teacher.py        (5 methods × 5 seeds; docs/teacher.md gives its time and results)
"""

from __future__ import annotations

import argparse
import statistics

import torch
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


def main(argv: list[str] | None = None) -> None:
    """Test accuracy (%) of each method on the sparse linear teacher (chance: 25%), as a table."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--methods", default="static,set,rigl,snfs,dense", help="Comma-separated methods.")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="Comma-separated seeds.")
    parser.add_argument("--steps", type=int, default=2000, help="Training steps of each run.")
    parser.add_argument("--density", type=float, default=0.02, help="d of the student's one layer.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a 400×4 layer: threads cost more than they bring
    try:
        rows = compare([m.strip() for m in args.methods.split(",")], [int(s) for s in args.seeds.split(",")],
                       args.steps, args.density)
    except ValueError as error:  # a method or density SparsityConfig refuses
        parser.error(str(error))
    print(f"sparse linear teacher: 8 of 400 inputs informative, 4 classes, d = {args.density}, {args.steps} steps")
    print(f"{'method':<12} {'test accuracy (%), mean ± std':>30}   per seed")
    for r in rows:  # one seed has no spread to show
        spread = f"± {r['std']:.1f}" if len(r["accuracies"]) > 1 else ""
        print(f"{r['method']:<12} {r['mean']:>21.1f} {spread:<8}   " + "  ".join(f"{a:.1f}" for a in r["accuracies"]))


if __name__ == "__main__":
    main()
