"""Datasets as the training loop reads them: CIFAR and synthetic images in memory, ImageNet folders."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models import DATASET_SHAPES
from rigl_harness import distributed


class DataUnavailable(ValueError):
    """The dataset is not on disk and cannot be downloaded: the message says how to provide it."""


@dataclass
class Data:
    """Each split is (uint8 images N×3×H×W, labels) held in memory (CIFAR, synthetic) or a
    torchvision dataset of normalised tensors read by a DataLoader (ImageNet)."""

    train: object
    val: object | None
    test: object
    num_classes: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    augment: Callable | None = None

    @property
    def num_train(self) -> int:
        return len(self.train[1]) if isinstance(self.train, tuple) else len(self.train)

    def to(self, device: torch.device) -> None:
        """The fast path: an in-memory dataset moves to the device and is augmented there."""
        if self.mean is None:
            return
        self.train, self.test = [(x.to(device), y.to(device)) for x, y in (self.train, self.test)]
        self.val = (self.val[0].to(device), self.val[1].to(device)) if self.val else None
        self.mean, self.std = self.mean.to(device), self.std.to(device)


def load_data(dataset: str, data_dir: str, train_subset: int, val_size: int, seed: int,
              test_subset: int = 0) -> Data:
    """The splits of `dataset`: val_size training images held out, train_subset of the rest used,
    the first test_subset test images (0: all)."""
    data = dataset_splits(dataset, data_dir, train_subset, val_size, seed)
    if test_subset:
        data.test = torch.utils.data.Subset(data.test, range(min(test_subset, len(data.test)))) \
            if isinstance(data.test, torch.utils.data.Dataset) else tuple(t[:test_subset] for t in data.test)
    return data


def dataset_splits(dataset: str, data_dir: str, train_subset: int, val_size: int, seed: int) -> Data:
    """The splits of `dataset`: val_size training images held out, train_subset of the rest used."""
    if dataset == "imagenet":
        return image_folder_data(data_dir, train_subset, val_size)
    if dataset == "synthetic":
        images, labels, test = synthetic_images(train_subset or 5000, val_size, seed)
    else:
        images, labels, test = cifar_images(dataset, data_dir)
    check_val_size(val_size, len(labels), dataset)
    val_idx, train_idx = split_indices(len(labels), val_size, 0 if dataset == "synthetic" else train_subset)
    train = (images[train_idx], labels[train_idx])
    val = (images[val_idx], labels[val_idx]) if val_size else None
    pixels = train[0].float()
    # the dataset's classes, not those a small --train-subset happens to hold: the test set has them all
    return Data(train, val, test, DATASET_SHAPES[dataset][0], pixels.mean((0, 2, 3)).view(1, 3, 1, 1),
                pixels.std((0, 2, 3)).view(1, 3, 1, 1),
                random_resized_crop_flip if dataset == "cifar100" else pad_crop_flip)


def check_val_size(val_size: int, n: int, dataset: str) -> None:
    """--val-size must leave training images: it holds out the first val_size of the n."""
    if val_size >= n:
        raise ValueError(f"--val-size {val_size} holds out all {n:,} training images of {dataset}: "
                         f"nothing is left to train on (use fewer, or 0)")


def split_indices(n: int, val_size: int, train_subset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split (seed 0), the same for every run: the first val_size of a permutation are
    held out, the first train_subset of the rest are trained on (0: all of them)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return val_idx, train_idx[:train_subset] if train_subset else train_idx


def image_folder_data(data_dir: str, train_subset: int, val_size: int) -> Data:
    """ImageNet as an ImageFolder tree, DATA_DIR/train/<class>/* and DATA_DIR/val/<class>/*, with
    the standard random-resized-crop and flip for training, resize 256 and center crop 224 for eval.
    train/ and val/ must hold the same classes: labels are the classes' sorted positions."""
    import torchvision.transforms as T
    root = os.path.abspath(data_dir)
    if not all(os.path.isdir(os.path.join(root, split)) for split in ("train", "val")):
        raise DataUnavailable(
            f"ImageNet is read from an ImageFolder tree, {root}/train/<class>/*.JPEG and "
            f"{root}/val/<class>/*.JPEG, which is not there (torchvision cannot download it); "
            f"pass --data-dir with the folder that holds train/ and val/.")
    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    augment = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    center = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    train, held, test = (image_folder(os.path.join(root, split), transform)
                         for split, transform in (("train", augment), ("train", center), ("val", center)))
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))[:5]
        raise DataUnavailable(f"{root}: train/ and val/ hold different classes ({len(train.classes)} and "
                              f"{len(test.classes)}; in one only: {', '.join(only)}), so labels would not match")
    check_val_size(val_size, len(train), "the ImageNet folder")
    val_idx, train_idx = split_indices(len(train), val_size, train_subset)
    val = torch.utils.data.Subset(held, val_idx.tolist()) if val_size else None
    return Data(torch.utils.data.Subset(train, train_idx.tolist()), val, test, len(train.classes))


def image_folder(folder: str, transform):
    """torchvision's ImageFolder, with one-line errors for a folder without class folders or
    images and for an image that cannot be read (named)."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    def load(path: str):
        try:
            return default_loader(path)
        except (OSError, ValueError) as error:
            raise DataUnavailable(f"{path} is not a readable image ({error})") from None
    try:
        return ImageFolder(folder, transform, loader=load)
    except FileNotFoundError as error:  # no class folder, or a class folder without images
        raise DataUnavailable(f"{folder}: {error}; ImageNet needs {folder}/<class>/<image> files") from None


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
"""The folder of each CIFAR's python version under --data-dir, as torchvision unpacks it."""


def check_cifar_on_disk(name: str, root: str) -> None:
    """Refuse, in one line, a CIFAR whose python-version files are not all under `root`: a study
    checks this before its first run rather than failing in it."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    missing = [file for file, _ in cls.train_list + cls.test_list
               if not os.path.isfile(os.path.join(root, CIFAR_FOLDERS[name], file))]
    if missing:
        raise DataUnavailable(f"{name} is not in {os.path.join(root, CIFAR_FOLDERS[name])} (no {missing[0]}): "
                              f"give --data-dir with the folder that holds its python version")


def cifar_images(name: str, root: str) -> tuple:
    """CIFAR-10/100 through torchvision, downloaded into `root` when the network allows."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = CIFAR_FOLDERS[name]
    damaged = [file for file, md5 in cls.train_list + cls.test_list if os.path.exists(os.path.join(root, folder, file))
               and not torchvision.datasets.utils.check_integrity(os.path.join(root, folder, file), md5)]
    if damaged:
        raise DataUnavailable(f"{os.path.join(root, folder, damaged[0])} is damaged (its MD5 is not the "
                              f"official one): copy it again from the python version of {name}")
    try:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as error:  # torchvision raises URLError, RuntimeError, OSError offline
        raise DataUnavailable(
            f"{name} is not in {root!r} and could not be downloaded ({error}). Put the python "
            f"version of the dataset in {os.path.join(root, folder)}, or pass --data-dir with the "
            f"folder that holds it, or run once with network access.") from None

    def tensors(ds):
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(ds.targets, dtype=torch.long))
    return (*tensors(train), tensors(test))


def synthetic_images(n_train: int, n_val: int, seed: int, classes: int = 10) -> tuple:
    """A learnable stand-in for CIFAR: each class is a smooth random template plus pixel noise."""
    g = torch.Generator().manual_seed(1234 + seed)
    templates = nn.functional.interpolate(torch.randn(classes, 3, 4, 4, generator=g), size=32,
                                          mode="bilinear", align_corners=False)

    def draw(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        x = templates[labels] + 1.5 * torch.randn(n, 3, 32, 32, generator=g)
        return (128 + 40 * x).clamp(0, 255).to(torch.uint8), labels
    images, labels = draw(n_train + n_val)
    return images, labels, draw(2000)


# ---------------------------------------------------------------------------------------------
# Augmentation on the device, a batch at a time
# ---------------------------------------------------------------------------------------------


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation on a batch: reflect-pad 4, random 32×32 crop, horizontal flip."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), generator=generator, device=x.device)
    rows = top + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = left + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    crops = padded[batch, torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-100 augmentation (RR): RandomResizedCrop(32), scale (0.08, 1), ratio (3/4, 4/3), flip."""
    from torchvision.ops import roi_align
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(0.08, 1.0, generator=generator) * h * w
    log_ratio = torch.empty(n, device=x.device).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                         generator=generator)
    cw = (area * log_ratio.exp()).sqrt().clamp(max=w)
    ch = (area / log_ratio.exp()).sqrt().clamp(max=h)
    x0 = torch.rand(n, generator=generator, device=x.device) * (w - cw)
    y0 = torch.rand(n, generator=generator, device=x.device) * (h - ch)
    boxes = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], 1)
    crops = roi_align(x, boxes, output_size=(h, w), aligned=True)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)


# ---------------------------------------------------------------------------------------------
# Minibatches
# ---------------------------------------------------------------------------------------------


def train_batch_count(data: Data, batch_size: int) -> int:
    """Minibatches per epoch. Under torchrun each global batch of --batch-size is split across the
    ranks; a last in-memory batch with fewer images than ranks is left out."""
    rank, size = distributed.world()
    if isinstance(data.train, tuple):
        return data.num_train // batch_size + (data.num_train % batch_size >= size)
    return math.ceil(math.ceil(data.num_train / size) / (batch_size // size))


def prepare(data: Data, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 images to normalised floats on the device, augmented when a generator is given."""
    x = images.float()
    if generator is not None:
        x = data.augment(x, generator)
    x = (x - data.mean) / data.std
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cuda" else x


def batches(data: Data, split, batch_size: int, device: torch.device,
            generator: torch.Generator | None = None, epoch: int = 0, seed: int = 0, workers: int = 0):
    """(x, y, images in the global batch) on the device. With a generator (training): shuffled,
    augmented, and this rank's share of the global batch; without: the whole split in order."""
    train = generator is not None
    rank, size = distributed.world() if train else (0, 1)
    if isinstance(split, tuple):
        images, labels = split
        n = len(labels)
        order = torch.randperm(n, generator=generator, device=device) if train else torch.arange(n, device=device)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            if len(index) < size:
                return
            count, index = len(index), index[rank::size]
            yield prepare(data, images[index], generator), labels[index], count
        return
    yield from folder_batches(split, batch_size, device, train, epoch, seed, workers)


def folder_batches(split, batch_size: int, device: torch.device, train: bool, epoch: int, seed: int,
                   workers: int):
    """A folder dataset: DataLoader workers decode and augment; the order is seeded per epoch."""
    rank, size = distributed.world() if train else (0, 1)
    order = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = None
    if size > 1:
        sampler = torch.utils.data.DistributedSampler(split, size, rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(split, batch_size // size, shuffle=train and sampler is None,
                                         sampler=sampler, generator=order, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    for x, y in loader:
        yield x.to(device, non_blocking=True, memory_format=memory_format), y.to(device), len(y) * size
