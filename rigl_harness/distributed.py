"""Several processes under torchrun: rank, device, process group, and a check that ranks agree."""

from __future__ import annotations

import hashlib
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger("rigl")


def world() -> tuple[int, int]:
    """(rank, number of processes): under torchrun the process group's, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 prints and writes files; the other ranks only train."""
    return world()[0] == 0


def init(device_name: str) -> None:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) when WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        gpu = torch.cuda.is_available() and device_name != "cpu"
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if gpu else "gloo")
        if dist.get_rank() != 0:
            log.setLevel(logging.WARNING)  # rank 0 tells the story


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_all() -> None:
    """Under torchrun, hold every rank here until all arrive: a rank that tore its process group
    down while rank 0 was still writing the run's last files could abort at exit."""
    if world()[1] > 1:
        dist.barrier()


def pick_device(name: str) -> torch.device:
    """--device: auto is CUDA when available (this rank's GPU under torchrun), else the CPU."""
    if name == "auto":
        cuda = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world()[1] > 1 else "cuda"
        return torch.device(cuda if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun: gradients are all-reduced in backward, so every
    rank ranks the same ones. The model itself in a single process."""
    if world()[1] == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def check_ranks_agree(sparsity, epoch: int) -> None:
    """Under torchrun, every rank must hold the same masks and weights of a rigl.Sparsity (they rank
    the same all-reduced gradients with the same generator): compare fingerprints, stop if they differ."""
    rank, size = world()
    if size == 1:
        return
    digest = hashlib.sha256()
    tensors = list(sparsity.weights.values()) + list(sparsity.masks.values())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    fingerprints = [None] * size
    dist.all_gather_object(fingerprints, digest.hexdigest())
    if len(set(fingerprints)) != 1:
        raise RuntimeError(f"ranks disagree on masks or weights after epoch {epoch}: {fingerprints}")
    if rank == 0:
        log.info("epoch %d: masks and weights identical on all %d ranks", epoch, size)
