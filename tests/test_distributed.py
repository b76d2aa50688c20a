"""torchrun (rigl_harness/distributed.py): ranks agree, one writes, resume."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO, read_jsonl, small_net, wait_for_first_epoch
from models import build_model
from rigl import Sparsity, SparsityConfig
from rigl_harness import distributed


# --- distributed.py: torchrun ---------------------------------------------------------------------


DDP_SMOKE = ["train", "--dataset", "synthetic", "--train-subset", "512", "--val-size", "128",
             "--test-subset", "256", "--batch-size", "64", "--update-interval", "2", "--device", "cpu"]


def torchrun(*args, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(29_500 + os.getpid() % 1000), "rigl.py", *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def test_a_batch_smaller_than_the_number_of_ranks_is_refused(tmp_path):
    """Every rank needs one image of each batch, or it trains no step at all (and the run would
    report "0 steps" with exit code 0)."""
    process = torchrun(*DDP_SMOKE, "--batch-size", "1", "--train-subset", "4", "--val-size", "0", "--epochs", "1",
                       "--out", str(tmp_path / "run"))
    output = process.communicate(timeout=300)[0]
    assert process.returncode != 0 and "done:" not in output
    assert "error: --batch-size 1 is smaller than the 2 torchrun processes" in " ".join(output.split())
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_ranks_fingerprint_covers_masks_and_weights(monkeypatch):
    """The fingerprint of check_ranks_agree changes with one mask bit (whose weight stays 0) and
    with one weight; ranks holding different ones are stopped."""
    gathered = []
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, digest: (gathered.append(digest), out.__setitem__(slice(None), [digest] * 2)))
    sparsity = Sparsity(small_net(), None, SparsityConfig(density=0.5), total_steps=100)
    name = next(iter(sparsity.masks))
    distributed.check_ranks_agree(sparsity, 1)
    sparsity.masks[name].view(-1)[torch.nonzero(~sparsity.masks[name].view(-1))[0]] = True
    distributed.check_ranks_agree(sparsity, 1)
    with torch.no_grad():
        sparsity.weights[name].view(-1)[0] += 1.0
    distributed.check_ranks_agree(sparsity, 1)
    assert len(set(gathered)) == 3
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, digest: out.__setitem__(slice(None), [digest, "another rank"]))
    with pytest.raises(RuntimeError, match="ranks disagree on masks or weights after epoch 1"):
        distributed.check_ranks_agree(sparsity, 1)


def test_torchrun_ranks_agree_on_masks_and_one_rank_writes(tmp_path):
    out = tmp_path / "ddp"
    process = torchrun(*DDP_SMOKE, "--epochs", "2", "--out", str(out))
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    # Five mask updates (t = 2, 4, ..., 10 < T_end = 12), and the ranks compare fingerprints of
    # their masks and weights after every epoch.
    assert "epoch 2: masks and weights identical on all 2 ranks" in output
    assert output.count("done: test acc") == 1  # rank 1 neither prints nor writes
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt", "config.json", "densities.jsonl",
                                                     "init.pt", "metrics.jsonl", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    single = Sparsity(build_model("wrn-10-1", 10), None, SparsityConfig(density=0.1), 16).layer_stats()
    assert [layer["active"] for layer in summary["layers"]] == [layer["active"] for layer in single]
    # The FLOP tally counts the global batch of 64, split 32 + 32 over the ranks.
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    assert summary["train_flops"] == pytest.approx(64 * (11 * 3 * f_sparse + 5 * (2 * f_sparse + f_dense)))


def test_torchrun_run_resumes_after_a_kill(tmp_path):
    out = tmp_path / "ddp"
    process = torchrun(*DDP_SMOKE, "--epochs", "3", "--out", str(out))
    wait_for_first_epoch(process, out)
    # torchrun's workers live in their own process groups: kill every process of this run.
    subprocess.run(["pkill", "-KILL", "-f", str(out)], check=False)
    process.communicate()
    done = len(read_jsonl(out / "metrics.jsonl"))
    assert done < 3, "the kill came too late to test anything"
    resumed = torchrun(*DDP_SMOKE, "--epochs", "3", "--out", str(out), "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert output.count(f"at epoch {done}, step {8 * done}") == 1
    assert "epoch 3: masks and weights identical on all 2 ranks" in output
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
