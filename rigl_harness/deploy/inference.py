"""CPU inference that uses the zeros where a measured micro-benchmark says it pays.

A masked Conv2d or Linear layer can run as a sparse matrix product: its weight in CSR form (the
zeros not stored) times the input, with torch.sparse.mm (Intel MKL's sparse BLAS in the x86
builds of torch). Whether that beats the dense kernel (oneDNN) depends on the layer's density,
shape and the activation it sees, so `sparsify_for_inference` times both on that activation and
swaps a layer only where the sparse one is faster. `compare_inference` then times whole networks
side by side: dense eager, channels_last, the per-layer sparse network, ONNX Runtime.

Sparse kernels for a convolution, all on the weight matrix W of shape (out, in·kh·kw):
    unfold   im2col (torch.nn.functional.unfold) and W @ columns; any stride and padding
    kn2row   stride 1, "same" padding: the taps stacked, (kh·kw·out, in) @ input, then the kh·kw
             shifted products summed, which avoids im2col's kh·kw copies of the input (Vasudevan,
             Anderson, Gregg 2017, "Parallel Multi Channel Convolution using General Matrix
             Multiplication", arXiv 1704.04428)
    1x1      a 1×1 convolution is W @ input directly (subsampled first when strided)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from rigl_harness.deploy import export

RELATIVE_TOLERANCE = 1e-5
"""The sparse network must match the masked dense one to this fraction of its largest output:
the sums run in another order, so fp32 rounding differs."""


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` inside the block (None: left as they are)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


T = TypeVar("T")


def interleaved(work: dict[str, Callable[[], T]], repeats: int, warmup: int = 0) -> dict[str, list[T]]:
    """What each entry returns in each of `repeats` rounds. Every entry runs once a round, so
    drifts of a shared machine hit all alike, and each round starts one entry further on, so no
    entry always follows the same one. `warmup` rounds run first and are not kept."""
    for _ in range(warmup):
        for call in work.values():
            call()
    names, results = list(work), {name: [] for name in work}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            results[name].append(work[name]())
    return results


def elapsed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return 1000 * (time.perf_counter() - started)


def median_ms(work: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Milliseconds of one call of each entry: the median over `repeats` interleaved rounds."""
    rounds = interleaved({name: functools.partial(elapsed_ms, call) for name, call in work.items()},
                               repeats, warmup)
    return {name: statistics.median(times) for name, times in rounds.items()}


# ---------------------------------------------------------------------------------------------
# Sparse layers
# ---------------------------------------------------------------------------------------------


def csr(matrix: torch.Tensor) -> torch.Tensor:
    """A 2-D dense matrix in CSR form (the zeros not stored), with int32 indices: MKL's sparse
    BLAS takes 32-bit indices, and int64 ones made torch.sparse.mm 1-25 % slower here (converted on
    every call)."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        full = matrix.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(full.crow_indices().int(), full.col_indices().int(),
                                       full.values(), full.shape)


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W in CSR form: (W @ xᵀ)ᵀ."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", csr(linear.weight), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone(),
                             persistent=False)
        self.kernel = "csr"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sparse.mm(self.weight, x.reshape(-1, x.shape[-1]).t().contiguous()).t()
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class SparseConv2d(nn.Module):
    """A Conv2d (groups 1) with a CSR weight, by one of the kernels of the module docstring."""

    def __init__(self, conv: nn.Conv2d, kernel: str):
        super().__init__()
        weight = conv.weight.detach()
        self.out_channels, self.kernel_size = weight.shape[0], conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel = kernel
        # kn2row: rows ordered (tap i, tap j, out channel), so the product splits into taps.
        matrix = weight.permute(2, 3, 0, 1).reshape(-1, weight.shape[1]) if kernel == "kn2row" \
            else weight.reshape(weight.shape[0], -1)
        self.register_buffer("weight", csr(matrix), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = {"1x1": self._pointwise, "unfold": self._unfold, "kn2row": self._kn2row}[self.kernel](x)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """W @ x for x of shape (N, C, H, W) read as the matrix (C, N·H·W); (rows, N, H, W)."""
        n, c, h, w = x.shape
        columns = x.reshape(c, h * w) if n == 1 else x.transpose(0, 1).reshape(c, n * h * w)
        return torch.sparse.mm(self.weight, columns).view(-1, n, h, w)

    def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """1×1: W @ x, x subsampled first when strided."""
        x = x[:, :, ::self.stride[0], ::self.stride[1]] if self.stride != (1, 1) else x
        return self._product(x.contiguous()).transpose(0, 1).contiguous()

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """im2col, then W @ columns (PyTorch's documented unfold-matmul-fold form of a conv)."""
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C·kh·kw, L)
        columns = columns[0] if n == 1 else columns.transpose(0, 1).reshape(columns.shape[1], -1)
        y = torch.sparse.mm(self.weight, columns).view(self.out_channels, n, out_h, out_w)
        return y.transpose(0, 1).contiguous()

    def _kn2row(self, x: torch.Tensor) -> torch.Tensor:
        """out[:, :, r, c] = Σ_ij (W_ij @ x)[:, :, r + i - p, c + j - q], zero outside the image."""
        (kh, kw), (p, q) = self.kernel_size, self.padding
        h, w = x.shape[2:]
        taps = self._product(x.contiguous()).view(kh, kw, self.out_channels, -1, h, w)
        out = taps[p, q].clone()
        for i in range(kh):
            for j in range(kw):
                di, dj = i - p, j - q
                if (di, dj) != (0, 0):
                    out[:, :, max(0, -di):h - max(0, di), max(0, -dj):w - max(0, dj)] += \
                        taps[i, j, :, :, max(0, di):h - max(0, -di), max(0, dj):w - max(0, -dj)]
        return out.transpose(0, 1).contiguous()


def sparse_candidates(module: nn.Module) -> dict[str, nn.Module]:
    """The sparse versions of a (masked) Conv2d or Linear that apply to its configuration."""
    if isinstance(module, nn.Linear):
        return {"csr": SparseLinear(module)}
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding_mode != "zeros" \
            or isinstance(module.padding, str):
        return {}
    kh, kw = module.kernel_size
    if (kh, kw) == (1, 1) and module.padding == (0, 0):
        return {"1x1": SparseConv2d(module, "1x1")}
    candidates = {"unfold": SparseConv2d(module, "unfold")}
    if module.stride == (1, 1) and module.dilation == (1, 1) and kh % 2 == kw % 2 == 1 \
            and module.padding == (kh // 2, kw // 2):
        candidates["kn2row"] = SparseConv2d(module, "kn2row")
    return candidates


# ---------------------------------------------------------------------------------------------
# The per-layer choice
# ---------------------------------------------------------------------------------------------


def layer_inputs(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape each named module sees when `model` runs on `example` (forward hooks)."""
    shapes, hooks = {}, []
    for name in names:
        def remember(module, args, name=name):
            shapes[name] = args[0].shape
        hooks.append(model.get_submodule(name).register_forward_pre_hook(remember))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` of `model` was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def time_layer(module: nn.Module, shape: torch.Size, repeats: int) -> tuple[dict[str, float], dict]:
    """Milliseconds of the dense module and each sparse candidate on a random input of `shape`."""
    candidates = sparse_candidates(module)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        times = median_ms({"dense": lambda: module(x),
                           **{k: (lambda m=m: m(x)) for k, m in candidates.items()}}, repeats)
    return times, candidates


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a fraction of max |b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def sparsify_for_inference(model: nn.Module, masks: dict[str, torch.Tensor], example_input: torch.Tensor,
                           threads: int | None = None, repeats: int = 7,
                           min_speedup: float = 1.0) -> tuple[nn.Module, list[dict]]:
    """A copy of `model` (masks applied, eval mode) in which every masked Conv2d / Linear whose
    fastest sparse kernel ran more than `min_speedup` times faster than the dense one on the
    activation it sees for `example_input` (median of `repeats` interleaved rounds, `threads`
    torch threads) is replaced by it (min_speedup=0: every layer that has a sparse kernel); and
    one row per masked layer: name, shape, input, density, dense_ms, sparse_ms, kernel, speedup,
    chosen. Layers timed alone can win and still lose as a network (caches, allocation), so the
    chosen network is timed whole against the dense one; unless it too is `min_speedup` times
    faster, the dense network is returned and no layer is marked chosen."""
    dense = export.masked_model(model, masks)
    sparse = copy.deepcopy(dense)
    names = [name.removesuffix(".weight") for name in masks]
    rows = []
    with torch_threads(threads):
        shapes = layer_inputs(dense, names, example_input)
        for name, weight in zip(names, masks):
            module = dense.get_submodule(name)
            times, candidates = time_layer(module, shapes[name], repeats)
            best = min((k for k in times if k != "dense"), key=times.get, default=None)
            chosen = best is not None and times["dense"] > min_speedup * times[best]
            if chosen:
                replace_module(sparse, name, candidates[best])
            rows.append({"name": name, "shape": tuple(module.weight.shape), "input": tuple(shapes[name]),
                         "density": float(masks[weight].float().mean()), "dense_ms": times["dense"],
                         "sparse_ms": times.get(best), "kernel": best, "chosen": chosen,
                         "speedup": times["dense"] / times[best] if best else None})
        check_outputs(dense, sparse, example_input)
        if min_speedup > 0 and any(r["chosen"] for r in rows) and not faster_as_a_whole(
                dense, sparse, example_input, repeats, min_speedup):
            return dense, [{**r, "chosen": False} for r in rows]
    return sparse, rows


def faster_as_a_whole(dense: nn.Module, sparse: nn.Module, example: torch.Tensor, repeats: int,
                      min_speedup: float) -> bool:
    """Whether the network with sparse layers runs more than `min_speedup` times faster than the
    dense one on `example` (median of `repeats` interleaved rounds)."""
    with torch.inference_mode():
        times = median_ms({"dense network": lambda: dense(example),
                           "sparse network": lambda: sparse(example)}, repeats)
    return times["dense network"] > min_speedup * times["sparse network"]


def check_outputs(dense: nn.Module, sparse: nn.Module, example: torch.Tensor) -> None:
    """The sparse network computes what the dense one does, within RELATIVE_TOLERANCE."""
    with torch.inference_mode():
        difference = relative_difference(sparse(example), dense(example))
    if not difference <= RELATIVE_TOLERANCE:
        raise RuntimeError(f"the sparse network differs from the masked one by {difference:.2e} "
                           f"of its largest output (tolerance {RELATIVE_TOLERANCE})")


# ---------------------------------------------------------------------------------------------
# Whole networks side by side
# ---------------------------------------------------------------------------------------------


def network_variants(model: nn.Module, masks: dict, x: torch.Tensor, threads: int, repeats: int,
                     onnx_path: Path | None) -> tuple[dict[str, Callable], list[dict]]:
    """The calls timed for one network and batch: dense eager, channels_last, per-layer sparse,
    ONNX Runtime (when installed), each computing the logits of `x`; and the per-layer rows."""
    dense = export.masked_model(model, masks)
    last = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    sparse, layers = sparsify_for_inference(model, masks, x, threads, repeats)
    calls = {"dense eager": lambda: dense(x), "channels_last": lambda: last(x_last),
             "per-layer sparse": lambda: sparse(x)}
    session = export.onnx_session(onnx_path, threads) if onnx_path else None
    if session is not None:
        feed = {"images": x.numpy()}
        calls["onnxruntime"] = lambda: torch.from_numpy(session.run(["logits"], feed)[0])
    return calls, layers


def compare_inference(models_and_masks: list[tuple[str, nn.Module, dict, int]], batch_sizes: list[int] | dict,
                      threads: int = 1, repeats: int = 5) -> list[dict]:
    """Each (label, model, masks, input size) at each batch size (a list, or label -> list): every
    variant of network_variants timed in `repeats` interleaved rounds, medians, and each one's
    ratio to dense eager and largest relative difference from its logits."""
    rows = []
    with torch_threads(threads), tempfile.TemporaryDirectory() as folder:
        for i, (label, model, masks, size) in enumerate(models_and_masks):
            onnx_path = onnx_file(model, masks, size, Path(folder) / f"model-{i}.onnx")
            for batch in batch_sizes[label] if isinstance(batch_sizes, dict) else batch_sizes:
                x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                calls, layers = network_variants(model, masks, x, threads, repeats, onnx_path)
                with torch.inference_mode():
                    reference = calls["dense eager"]()
                    differences = {k: relative_difference(call(), reference) for k, call in calls.items()}
                    times = median_ms(calls, repeats)
                chosen = sum(r["chosen"] for r in layers)
                alone = sum(r["speedup"] is not None and r["speedup"] > 1 for r in layers)
                made_sparse = f"{chosen}/{len(layers)}" + (f" ({alone} faster alone, not as a network)"
                                                           if alone and not chosen else "")
                rows += [{"model": label, "batch": batch, "variant": k, "ms": ms, "threads": threads,
                          "ratio": ms / times["dense eager"], "max_rel_diff": differences[k],
                          "layers": layers if k == "per-layer sparse" else None,
                          "sparse_layers": made_sparse if k == "per-layer sparse" else ""}
                         for k, ms in times.items()]
    return rows


def onnx_file(model: nn.Module, masks: dict, size: int, path: Path) -> Path | None:
    """The masked network exported to ONNX at `path`; None when onnx or onnxruntime is missing."""
    if export.onnx_missing() or importlib.util.find_spec("onnxruntime") is None:
        return None
    export.export_onnx(export.masked_model(model, masks), torch.zeros(1, 3, size, size), path)
    return path
