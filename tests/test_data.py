"""Data (rigl_harness/data.py): ImageNet folders, damaged files, and the real CIFAR-10."""

import os
import pathlib

import pytest
import torch

import train
from helpers import build_run, cli, rich_console, run
from rigl import SparsityConfig
from rigl_harness.data import load_data
from train import TrainConfig, resolve_recipe


# --- data.py: ImageNet folders and the real CIFAR-10 ----------------------------------------------


def test_imagenet_without_its_folder_says_where_it_is_expected(tmp_path):
    result = run("train", "--dataset", "imagenet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    message = " ".join(result.stdout.split())
    assert "ImageFolder tree" in message and "train/<class>" in message and "Traceback" not in result.stderr


def test_imagenet_folder_trains_resnet50(tmp_path):
    """A tiny ImageFolder tree stands in for ImageNet: the folder path, its DataLoader and the
    ImageNet ResNet-50 at 224×224 run end to end."""
    from PIL import Image
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(tmp_path / "data" / split / label / f"{i}.png")
    cfg = resolve_recipe(TrainConfig(dataset="imagenet", data_dir=str(tmp_path / "data"), epochs=1,
                                               batch_size=3, val_size=2, workers=0))
    summary = train.start_run(cfg, SparsityConfig(density=0.5, update_interval=2), tmp_path / "run",
                             resume=False, console=rich_console())
    assert summary["steps"] == 2 and summary["final_val_acc"] is not None
    assert summary["inference_flops"] / summary["inference_flops_ratio"] == pytest.approx(8.2e9, rel=0.01)


def test_test_subset_keeps_the_first_test_images():
    full = load_data("synthetic", "data", 64, 0, 0)
    first = load_data("synthetic", "data", 64, 0, 0, test_subset=100)
    assert full.test[0].shape[0] == 2000 and first.test[0].shape[0] == 100
    assert torch.equal(first.test[0], full.test[0][:100]) and torch.equal(first.test[1], full.test[1][:100])
    assert load_data("synthetic", "data", 64, 0, 0, test_subset=5000).test[0].shape[0] == 2000  # at most all


def test_test_subset_of_an_image_folder(tmp_path):
    root = image_tree(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    assert len(load_data("imagenet", str(root), 0, 2, 0).test) == 6
    assert len(load_data("imagenet", str(root), 0, 2, 0, test_subset=4).test) == 4


def image_tree(root, classes: dict, corrupt: str | None = None):
    """An ImageFolder tree: {"train": ["a", "b"], "val": [...]}, three small images per class."""
    from PIL import Image
    for split, names in classes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / split / name).mkdir()
            for i in range(3):
                Image.fromarray(torch.zeros(40, 40, 3, dtype=torch.uint8).numpy()).save(root / split / name / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("tree, message", [
    ({"train": ["a", "b"], "val": ["a", "c"]}, "train/ and val/ hold different classes"),
    ({"train": [], "val": []}, "ImageNet needs"),
])
def test_imagenet_folders_that_cannot_be_scored_are_refused(tmp_path, tree, message):
    root = image_tree(tmp_path / "data", tree)
    result = cli("train", "--dataset", "imagenet", "--data-dir", str(root), "--workers", "0",
                 "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and message in " ".join(result.stdout.split()), result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_corrupt_image_is_named(tmp_path):
    root = image_tree(tmp_path / "data", {"train": ["a", "b"], "val": ["a", "b"]}, corrupt="train/a/1.png")
    result = cli("train", "--dataset", "imagenet", "--data-dir", str(root), "--epochs", "1", "--batch-size", "2",
                 "--val-size", "1", "--workers", "2", "--out", str(tmp_path / "run"))
    message = " ".join(result.stdout.split())
    assert result.returncode == 2 and "train/a/1.png is not a readable image" in message, message
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(not os.environ.get("RIGL_DATA_DIR"),
                    reason="set RIGL_DATA_DIR to a folder holding cifar-10-batches-py (.ci/run does)")
def test_a_damaged_cifar_file_is_named(tmp_path):
    import shutil
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(pathlib.Path(os.environ["RIGL_DATA_DIR"]) / "cifar-10-batches-py", folder)
    damaged = bytearray((folder / "data_batch_3").read_bytes())
    damaged[5000:5100] = bytes(100)
    (folder / "data_batch_3").write_bytes(bytes(damaged))
    result = cli("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "data_batch_3 is damaged" in " ".join(result.stdout.split())


@pytest.mark.skipif(not os.environ.get("RIGL_DATA_DIR"),
                    reason="set RIGL_DATA_DIR to a folder holding cifar-10-batches-py (.ci/run does)")
def test_rigl_on_real_cifar10_learns(tmp_path):
    """WRN-22-2, RigL, ERK, d = 0.1, 150 steps of batch 32 on the first 4,800 training images,
    masks updated every 25 steps until T_end (step 112)."""
    cfg = resolve_recipe(TrainConfig(data_dir=os.environ["RIGL_DATA_DIR"], train_subset=4800,
                                               val_size=0, epochs=1, batch_size=32, test_subset=1000))
    run = build_run(cfg, SparsityConfig(density=0.1, update_interval=25))
    assert len(run.data.test[1]) == 1000  # the first 1,000 test images keep CI fast
    summary = train.train(run, tmp_path, rich_console())
    assert summary["steps"] == 150 and abs(summary["density"] - 0.1) < 1e-4
    assert run.sparsity.last_update["step"] == 100 and run.sparsity.last_update["grown"] > 0
    assert summary["final_test_acc"] > 20  # chance is 10%; 31% here
