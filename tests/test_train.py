"""The training loop of train.py and `python rigl.py train`: runs, resume, refusals, the recipes."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

import flops
import models
import rigl
import train
from helpers import REPO, SMOKE, build_run, cli, one_line_error, read_jsonl, rich_console, run, shapes_of, small_net, straight_and_resumed, wait_for_first_epoch
from models import build_model
from rigl import Sparsity, SparsityConfig
from rigl_harness import terminal
from train import REPORT_STEPS, TrainConfig, resolve_recipe


# --- train.py: the training loop and `python rigl.py train` ----------------------------------------


def test_cli_run_writes_config_metrics_summary_and_checkpoint(smoke_run):
    out, stdout = smoke_run
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["model"] == "wrn-10-1" and config["train"]["lr"] == 0.1  # recipe filled in
    assert config["sparsity"]["method"] == "rigl" and config["sparsity"]["density"] == 0.1
    assert {"torch", "git_commit"} <= set(config)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    keys = ("epoch", "step", "lr", "train_loss", "val_acc", "test_acc", "drop_fraction", "regrown", "explored",
            "inference_flops_ratio", "elapsed", "eval_elapsed")
    assert all(tuple(m) == keys for m in metrics)  # the fixed keys of README "Metrics", in order
    assert metrics[-1]["step"] == 16 and metrics[0]["regrown"] > 0
    summary = json.loads((out / "summary.json").read_text())
    # exploration: above the density once connections were regrown, never falling, in the summary too
    assert 0.1 < metrics[0]["explored"] <= metrics[1]["explored"] == summary["explored"] < 1
    assert all(layer["density"] <= layer["explored"] <= 1 for layer in summary["layers"])
    assert metrics[-1]["inference_flops_ratio"] == summary["inference_flops_ratio"] < 1
    assert {"final_val_acc", "final_test_acc", "best_val_acc", "wall_time", "eval_time", "steps", "layers"} <= set(summary)
    assert summary["eval_time"] == metrics[-1]["eval_elapsed"] > 0  # evaluation is timed apart from training
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    allocation = rigl.initial_densities(shapes_of(build_model("wrn-10-1", 10)), SparsityConfig(density=0.1))
    assert [(layer["name"], layer["active"]) for layer in summary["layers"]] == [
        (name, rigl.active_count(d, layer["total"])) for (name, d), layer in zip(allocation.items(), summary["layers"])]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 16
    # FLOPs: 16 steps of 64 images, T_end = 12, RigL updates (a dense gradient) at steps 4 and 8.
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    expected = 64 * (14 * 3 * f_sparse + 2 * (2 * f_sparse + f_dense))
    assert summary["train_flops"] == pytest.approx(expected, rel=1e-9)
    assert summary["train_flops_ratio"] == pytest.approx(expected / (3 * f_dense * 512 * 2), rel=1e-9)
    assert "masked layers" in stdout and "epoch    2" in stdout


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # step 1 is a mask update
def test_training_with_accumulation_counts_optimizer_steps(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=512, val_size=0, epochs=1,
                                               batch_size=64, accumulate=3))
    summary = train.start_run(cfg, SparsityConfig(update_interval=1), tmp_path / "run", resume=False,
                             console=rich_console())
    assert summary["steps"] == 3  # 8 micro-batches of 64: steps after 3, 6 and the last 2
    f_sparse = summary["inference_flops"]
    f_dense = f_sparse / summary["inference_flops_ratio"]
    # T_end = int(0.75 · 3) = 2 and updates need t < T_end, so only step 1 pays a dense gradient;
    # every image is counted once, in the step its micro-batch belongs to.
    assert summary["train_flops"] == pytest.approx(
        192 * (2 * f_sparse + f_dense) + 192 * 3 * f_sparse + 128 * 3 * f_sparse, rel=1e-9)


def test_accumulation_through_the_training_loop_matches_one_big_batch(tmp_path, monkeypatch):
    """--accumulate 4 with batches of 32 takes the steps, grows the connections and reaches the
    weights (to float tolerance) of batches of 128, through train.train itself: a model without
    batch norm or dropout, and augmentation off, so that only the split of the batch differs."""
    def no_batch_norm(name, num_classes, width_scale=1.0):
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 16 * 16, num_classes))
    monkeypatch.setattr(train, "build_model", no_batch_norm)

    def trained(batch_size, accumulate):
        cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=512, val_size=0, epochs=2,
                                                   batch_size=batch_size, accumulate=accumulate))
        run = build_run(cfg, SparsityConfig(density=0.2, update_interval=2, dense_layers=()))
        run.data.augment = lambda images, generator: images
        run.data.test = tuple(t[:64] for t in run.data.test)
        (tmp_path / f"{batch_size}").mkdir()
        return run, train.train(run, tmp_path / f"{batch_size}", rich_console())
    (small, small_summary), (big, big_summary) = trained(32, 4), trained(128, 1)
    assert small_summary["steps"] == big_summary["steps"] == 8
    assert [m["regrown"] for m in small.history] == [m["regrown"] for m in big.history] != [0, 0]
    for name, mask in big.sparsity.masks.items():
        assert torch.equal(small.sparsity.masks[name], mask), name
    for name, weight in big.model.state_dict().items():
        assert torch.allclose(small.model.state_dict()[name], weight, rtol=1e-4, atol=1e-6), name
    assert [m["train_loss"] for m in small.history] == pytest.approx([m["train_loss"] for m in big.history])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_train_on_cpu(tmp_path, precision):
    cfg = TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=1, batch_size=64,
                           precision=precision)
    run = build_run(resolve_recipe(cfg), SparsityConfig(update_interval=2))
    run.data.test = tuple(t[:256] for t in run.data.test)
    summary = train.train(run, tmp_path, rich_console())
    assert summary["steps"] == 4 and run.scaler.is_enabled() == (precision == "fp16")
    assert run.sparsity.last_update["step"] == 2  # the update at t = 2 < T_end = 3 happened
    for name, mask in run.sparsity.masks.items():
        assert torch.all(run.sparsity.weights[name][~mask] == 0)


def test_synthetic_data_is_learnable(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=2000, val_size=500, epochs=3,
                                               seed=1, test_subset=500))
    summary = train.start_run(cfg, SparsityConfig(density=0.1, update_interval=10), tmp_path / "run",
                             resume=False, console=rich_console())
    assert summary["final_test_acc"] > 40  # chance is 10%, after 48 steps


def test_small_dense_matches_the_sparse_parameter_count():
    for density, distribution in [(0.1, "erk"), (0.2, "uniform")]:
        cfg = SparsityConfig(method="small-dense", density=density, distribution=distribution)
        full = build_model("wrn-22-2", 10)
        sparse = Sparsity(full, None, SparsityConfig(density=density, distribution=distribution), 10)
        target = sum(r["active"] for r in sparse.layer_stats())
        small = build_model("wrn-22-2", 10, width_scale=flops.small_dense_width("wrn-22-2", 10, cfg))
        count = sum(w.numel() for w in rigl.masked_weights(small).values())
        assert abs(count - target) / target < 0.02
        assert Sparsity(small, None, cfg, 10).masks == {}  # trained dense


def test_flops_and_train_describe_the_same_small_dense_network(tmp_path):
    """One definition of Small-Dense: `flops --method small-dense` counts the network `train` builds."""
    # wrn-22-2 at d = 0.1: a width of √d = 0.316 (RR's) would build other channel counts than ours
    result = cli("flops", "--method", "small-dense", "--model", "wrn-22-2", "--dataset", "synthetic",
                 "--density", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    counted = [(r["name"], r["shape"]) for r in json.loads(result.stdout)["layers"]]
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-22-2", train_subset=64,
                                               val_size=0, epochs=1))
    trained = build_run(cfg, SparsityConfig(method="small-dense", density=0.1)).sparsity.weights
    assert counted == [(name, list(w.shape)) for name, w in trained.items()]
    assert counted != [(n, list(s)) for n, s in shapes_of(build_model("wrn-22-2", 10)).items()]  # narrower


def test_lottery_retrains_the_pruning_masks_from_the_same_initialisation(tmp_path):
    prune_cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0,
                                                     epochs=2, batch_size=64))
    train.start_run(prune_cfg, SparsityConfig(method="pruning", density=0.3, update_interval=2),
                   tmp_path / "pruning", resume=False, console=rich_console())
    final = torch.load(tmp_path / "pruning" / "checkpoint.pt", weights_only=True)["sparsity"]["masks"]
    init = torch.load(tmp_path / "pruning" / "init.pt", weights_only=True)
    ticket_cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0,
                                                      epochs=1, seed=5, masks_from=str(tmp_path / "pruning"),
                                            init_from=str(tmp_path / "pruning")))
    run = build_run(ticket_cfg, SparsityConfig(method="lottery", density=0.3))
    assert run.sparsity.masks.keys() == final.keys()
    for name, mask in final.items():
        assert torch.equal(run.sparsity.masks[name], mask)
        assert torch.equal(run.sparsity.weights[name].detach(), init[name] * mask)
    active = sum(int(m.sum()) for m in final.values())
    assert active == round(0.3 * sum(m.numel() for m in final.values()))
    for missing in ("masks_from", "init_from"):
        with pytest.raises(ValueError, match="method lottery needs --masks-from RUN_DIR and --init-from RUN_DIR"):
            build_run(replace(ticket_cfg, **{missing: None}), SparsityConfig(method="lottery", density=0.3))


def test_a_run_whose_densities_move_resumes_with_the_same_flops(tmp_path, monkeypatch):
    """RigL-SM moves layer budgets, so the forward FLOPs of its masks change: a resumed run counts
    its FLOPs from the restored masks, and ends with the uninterrupted run's summary and records."""
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=2, batch_size=64))
    sparse_cfg = SparsityConfig(method="rigl-sm", density=0.3, update_interval=3)
    straight, resumed = straight_and_resumed(cfg, sparse_cfg, tmp_path, monkeypatch)
    moved = read_jsonl(tmp_path / "straight" / "densities.jsonl")
    assert moved[0]["densities"] != moved[-1]["densities"], "the budgets did not move: nothing is tested"
    without_time = [lambda m: {k: v for k, v in m.items() if k not in ("elapsed", "wall_time", "eval_elapsed",
                                                                         "eval_time")}][0]
    assert without_time(resumed) == without_time(straight)
    assert [without_time(m) for m in read_jsonl(tmp_path / "straight" / "metrics.jsonl")] == \
           [without_time(m) for m in read_jsonl(tmp_path / "stopped" / "metrics.jsonl")]


def test_kill_and_resume_ends_bit_identical(tmp_path):
    args = ["train", *SMOKE, "--epochs", "3", "--method", "set"]
    straight = cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "rigl.py", *args, "--out", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_first_epoch(process, killed)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_done = len(read_jsonl(killed / "metrics.jsonl"))
    assert epochs_done < 3, "the kill came too late to test anything"
    resumed = cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {killed} at epoch {epochs_done}" in resumed.stdout.replace("\n", "")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name
        assert torch.equal(a["sparsity"]["ever_active"][name], b["sparsity"]["ever_active"][name]), name
    drop_time = [lambda m: {k: v for k, v in m.items() if k not in ("elapsed", "eval_elapsed")}][0]
    assert [drop_time(m) for m in read_jsonl(tmp_path / "straight" / "metrics.jsonl")] == \
           [drop_time(m) for m in read_jsonl(killed / "metrics.jsonl")]


def test_resume_with_another_configuration_is_refused(smoke_run):
    out, _ = smoke_run
    result = cli("train", *SMOKE, "--epochs", "2", "--lr", "0.05", "--density", "0.2",
                 "--out", str(out), "--resume")
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "refusing to resume" in message and "lr (run has 0.1, asked for 0.05)" in message
    assert "density (run has 0.1, asked for 0.2)" in message and "Traceback" not in result.stderr


def test_fresh_run_into_a_used_directory_is_refused(smoke_run):
    out, _ = smoke_run
    result = cli("train", *SMOKE, "--epochs", "2", "--out", str(out))
    assert result.returncode == 2 and "pass --resume" in " ".join(result.stdout.split())


def test_offline_without_data_says_how_to_provide_it(tmp_path):
    result = run("train", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "could not be downloaded" in message and "cifar-10-batches-py" in message
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["--density", "1.5"], "density must satisfy 0 < density <= 1"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--drop-fraction", "2"], "--drop-fraction must satisfy 0 <= drop_fraction <= 1"),
    (["--label-smoothing", "2"], "--label-smoothing must satisfy"),
    (["--momentum", "1.5"], "--momentum must satisfy"),
    (["--seed", str(10**23)], "--seed must be an integer >= 0"),
    (["--device", "foo"], "--device foo: not a device"),
    (["--epochs", "1", "--multiplier", "0.1"], "rounds to no epoch at all"),
    (["--method", "magic"], "magic"),
    (["--update-interval", "many"], "Invalid value for '--update-interval'"),
    (["--erk-power-scale", "inf"], "--erk-power-scale must satisfy 0 <= erk_power_scale < inf"),
    (["--erk-power-scale", "200"], "erk_power_scale 200.0 takes the ERK scores of the sparse layers out of"),
    (["--method", "pruning", "--t-start", "0.5", "--t-end", "0.5"], "pruning never prunes"),
    (["--method", "pruning", "--train-subset", "64", "--val-size", "0", "--epochs", "1"], "pruning never prunes"),
    (["--train-subset", "500", "--val-size", "5000"],
     "--val-size 5000 holds out more images than --train-subset 500 trains on"),
])
def test_bad_option_values_are_rejected_with_a_message(tmp_path, args, message):
    result = run("train", *SMOKE, *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert message in " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in result.stdout + result.stderr


def test_small_dense_flops_are_counted_against_the_full_width_network(tmp_path):
    """Small-Dense is dense but narrower: its FLOPs are a fraction of the full-width model's, the
    same fraction `python rigl.py flops --method small-dense` reports."""
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", model="wrn-22-2", train_subset=64, val_size=0,
                                               epochs=1, batch_size=64))
    run = build_run(cfg, SparsityConfig(method="small-dense", density=0.1))
    counted = flops.method_flops("wrn-22-2", "synthetic", SparsityConfig(method="small-dense", density=0.1), 1.0)
    assert run.f_sparse / run.f_dense == pytest.approx(counted["inference_flops_ratio"])
    assert 0.09 < run.f_sparse / run.f_dense < 0.11


def test_micro_batches_in_step():
    assert [train.micro_batches_in_step(i, 3, 8) for i in range(8)] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert [train.micro_batches_in_step(i, 10, 4) for i in range(4)] == [4, 4, 4, 4]
    assert [train.micro_batches_in_step(i, 1, 3) for i in range(3)] == [1, 1, 1]


def test_accumulating_more_micro_batches_than_an_epoch_has_reports_their_mean_loss(tmp_path):
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=1,
                                               batch_size=64, accumulate=10))
    summary = train.start_run(cfg, SparsityConfig(), tmp_path / "run", resume=False, console=rich_console())
    loss = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["train_loss"]
    assert summary["steps"] == 1 and 2.0 < loss < 2.6  # the mean over 4 micro-batches (chance: ln 10 = 2.30)


def test_a_diverging_run_stops_at_its_step_and_writes_strict_json(tmp_path):
    result = cli("train", *SMOKE, "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "diverged at step 2:" in result.stdout and "no epoch was saved" in " ".join(result.stdout.split())
    [record] = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
                for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["train_loss"] is None and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_ctrl_c_before_the_first_epoch_does_not_claim_a_saved_epoch(tmp_path):
    out = tmp_path / "run"
    # Ctrl-C as a terminal delivers it: a test run started in the background of a script inherits
    # SIGINT ignored (POSIX), and a program that inherits it ignored rightly keeps it so
    process = subprocess.Popen([sys.executable, "rigl.py", "train", *SMOKE, "--train-subset", "4096",
                                "--epochs", "1", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "init.pt").exists():  # the run has started, no epoch has finished
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130 and "nothing to resume" in output and "is saved" not in output


def test_sigterm_says_what_is_saved_as_ctrl_c_does(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "rigl.py", "train", *SMOKE, "--epochs", "50", "--out", str(out)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_first_epoch(process, out)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in output, output
    assert f"interrupted: the last finished epoch is saved in {out}; continue with --resume" in " ".join(output.split())


@pytest.mark.skipif(not os.environ.get("RIGL_DATA_DIR"),
                    reason="set RIGL_DATA_DIR to a folder holding cifar-10-batches-py (.ci/run does)")
def test_a_validation_set_as_large_as_the_training_set_is_refused_naming_the_option(tmp_path):
    result = cli("train", "--data-dir", os.environ["RIGL_DATA_DIR"], "--model", "wrn-10-1", "--epochs", "1",
                 "--val-size", "50000", "--out", str(tmp_path / "run"))
    one_line_error(result, "--val-size 50000 holds out all 50,000 training images of cifar10")


def test_a_small_train_subset_keeps_every_class_of_the_test_set(tmp_path):
    """Six synthetic images hold labels up to 7 only; the classifier still has the dataset's 10
    outputs, so the test set's classes all exist (and export rebuilds the network)."""
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=6, val_size=0, epochs=1, batch_size=6))
    run = build_run(cfg, SparsityConfig())
    assert int(run.data.train[1].max()) < 9 and run.model.fc.weight.shape[0] == 10
    assert int(run.data.test[1].max()) < run.data.num_classes


def test_no_mask_update_before_t_end_is_warned_about(caplog):
    with caplog.at_level("WARNING", logger="rigl"):
        Sparsity(small_net(), None, SparsityConfig(update_interval=100), total_steps=100)
    assert "no mask will change: the first update is at step ΔT = 100, not before T_end = 75" in caplog.text
    assert "update_interval (--update-interval) 74 or less gives one, 7 about ten" in caplog.text


def test_a_log_that_is_no_terminal_gets_plain_progress_lines(tmp_path, monkeypatch):
    """Piped to a file or a scheduler's log there is no progress bar: a plain line every
    terminal.PLAIN_EVERY seconds (here: every step) with the step, loss, images/s and time left."""
    monkeypatch.setattr(terminal, "PLAIN_EVERY", 0.0)
    console = rich_console()
    assert not console.is_terminal
    cfg = resolve_recipe(TrainConfig(dataset="synthetic", train_subset=256, val_size=0, epochs=1, batch_size=64))
    train.start_run(cfg, SparsityConfig(update_interval=2), tmp_path / "run", resume=False, console=console)
    lines = [line for line in console.file.getvalue().splitlines() if line.startswith("epoch 1/1  step")]
    assert [line.split()[3] for line in lines] == ["1/4", "2/4", "3/4"]  # the last step's line is the epoch's
    assert all(re.search(r"loss \d+\.\d{3}  [\d,]+ img/s  epoch time left [\d,]+s$", line) for line in lines)


def test_a_start_that_fails_leaves_no_directory_behind(tmp_path):
    out = tmp_path / "run"
    result = run("train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "no-data"), "--out", str(out))
    assert result.returncode == 2 and not out.exists(), result.stdout


# --- train.py: the report's recipes, the lr schedule and SGD -----------------------------------


def test_recipes_are_the_reports_and_the_papers():
    cifar10, cifar100 = resolve_recipe(TrainConfig()), resolve_recipe(TrainConfig(dataset="cifar100"))
    steps = [round(m * REPORT_STEPS) for m in cifar10.lr_milestones]
    assert steps == [30_000, 60_000] and cifar10.lr_gamma == 0.2 and cifar10.weight_decay == 5e-4
    assert [round(m * REPORT_STEPS) for m in cifar100.lr_milestones] == [20_000, 40_000, 60_000, 80_000]
    assert round(cifar100.warmup * REPORT_STEPS) == 1760 and cifar100.label_smoothing == 0.1
    imagenet = resolve_recipe(TrainConfig(dataset="imagenet", batch_size=1024))
    assert imagenet.lr == pytest.approx(0.4) and imagenet.lr_milestones == (0.3, 0.7, 0.9)
    assert resolve_recipe(TrainConfig(lr=0.05, epochs=3)).lr == 0.05  # a given value is kept
    # SparsityConfig's pruning start is RR's step 700 of the same run
    assert round(SparsityConfig().t_start * REPORT_STEPS) == 700


def test_lr_factor_warms_up_linearly_then_decays_by_gamma_at_each_milestone():
    factor = [train.lr_factor(step, 100, 0.1, (0.5, 0.8), 0.2) for step in range(100)]
    assert factor[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # 0.1, ..., 1.0
    assert factor[10:50] == [1.0] * 40
    assert factor[50:80] == pytest.approx([0.2] * 30) and factor[80:] == pytest.approx([0.04] * 20)


def test_sgd_is_nesterov_and_decays_only_weights_with_ndim_above_one():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    optimizer = train.make_optimizer(model, resolve_recipe(TrainConfig()))
    decayed, plain = optimizer.param_groups
    assert {p.ndim for p in decayed["params"]} == {4, 2} and decayed["weight_decay"] == 5e-4
    assert {p.ndim for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert decayed["nesterov"] and decayed["momentum"] == 0.9 and decayed["lr"] == 0.1


def test_train_config_names_the_field_it_refuses():
    for bad, message in [(dict(dataset="mnist"), "dataset must be one of cifar10 | cifar100"),
                         (dict(lr=0.0), "lr must satisfy lr > 0"), (dict(lr=math.inf), "lr must satisfy lr > 0"),
                         (dict(weight_decay=-1e-4), "weight_decay must satisfy weight_decay >= 0"),
                         (dict(warmup=1.5), "warmup must satisfy warmup >= 0 and <= 1"),
                         (dict(batch_size=0), "batch_size must be an integer >= 1"),
                         (dict(lr_milestones=(0.5, 1.0)), "lr_milestones must be fractions in (0, 1)")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**bad)


def test_the_default_workers_fit_the_machine(monkeypatch):
    assert TrainConfig().workers == train.default_workers()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert train.default_workers() == 2  # not 8 DataLoader processes on two cores
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert train.default_workers() == 8
