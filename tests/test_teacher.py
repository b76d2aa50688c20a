"""teacher.py: why RigL exists, in a few seconds."""


import statistics

import torch

import teacher


# --- teacher.py: why RigL exists, in a few seconds ----------------------------------------------


def test_rigl_finds_the_teachers_inputs_that_a_random_mask_misses():
    """The README's demonstration, shorter: on the sparse linear teacher RigL beats a static mask
    by far more than seed noise, and SET, which grows at random, lands between them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = {r["method"]: r["accuracies"] for r in teacher.compare(["static", "set", "rigl"], [0, 1, 2], 600, 0.02)}
    finally:
        torch.set_num_threads(threads)
    assert min(rows["rigl"]) > max(rows["static"]) + 30  # chance is 25%
    assert max(rows["set"]) < min(rows["rigl"]) - 20
    assert statistics.fmean(rows["set"]) > statistics.fmean(rows["static"])
