"""Measure a (pruned) network: parameters, MACs dense and effective (counted in ``flops.py``), latency per batch, and
storage bytes."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.flops import as_input_tuple, count_macs

_Hook = Callable[[nn.Module, tuple, Any], None]


def profile(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    *,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> dict[str, int | float]:
    """Profile a model on an example batch: size, compute (dense and discounting zeroed weights), speed, storage.

    The FLOP figures are multiply-accumulates (MACs) for ONE sample, as counted by ptflops, with one MAC counted as one
    FLOP (the usual convention of pruning papers). ptflops also counts bias additions, activations, pooling and
    normalisation elements, and functional calls in ``forward`` (``F.relu``, ``torch.matmul``, ...); an activation or
    pooling *module* is counted once, not twice as ptflops 0.7.5 alone reports it. They are taken on the first sample
    of ``example_input`` (for a tuple, the first row of every tensor), so for a model that packs its sequences they
    cover that sample's real length, and for one that runs over the padding, such as
    :class:`~lightning_prune.models.LSTMClassifier`, every padded step. ptflops runs on a deep copy,
    so the caller's model is never modified (the copy needs as much memory again as the model).

    ``flops_effective`` multiplies each layer's MACs by the density (fraction of non-zero entries) of that layer's
    weight(s): for ``nn.LSTM``/``nn.GRU``/``nn.RNN`` all ``weight_ih_l*`` and ``weight_hh_l*`` together. Layers without
    weights, normalisation layers and operations ptflops counts outside modules (functional calls) count dense. It is
    the compute a sparse kernel could skip; dense kernels do not skip it, which is what ``latency_ms_per_batch``
    shows.

    Storage: ``state_dict_bytes`` is ``sum(numel * element_size)`` over the tensors of ``model.state_dict()``;
    ``sparse_bytes`` stores each tensor as its non-zeros plus one index each (COO-style),
    ``sum(nnz * (element_size + index_size))`` with ``index_size`` 4 bytes if ``numel < 2**31`` else 8.

    Args:
        model: The network. Left in the train/eval mode (per submodule) it was in.
        example_input: A batch for ``model(*inputs)``: one tensor, or a tuple of tensors such as ``(tokens, lengths)``.
            Every tensor must be on the model's device and have the batch as its first dimension.
        warmup: Untimed calls before timing.
        repeats: Timed calls; the latency is their median.
        threads: With a value, ``torch.set_num_threads(threads)`` while timing (the previous value is restored).

    Returns:
        A dict with ``params_total`` (int), ``params_nonzero`` (int), ``flops_dense`` (int, MACs per sample),
        ``flops_effective`` (float, MACs per sample), ``latency_ms_per_batch`` (float, median over ``repeats`` calls on
        the whole batch in eval mode under ``torch.inference_mode()``), ``state_dict_bytes`` (int) and
        ``sparse_bytes`` (int).

    Raises:
        TypeError: If ``example_input`` is neither a tensor nor a tuple of tensors.
        ValueError: If ``warmup`` < 0, ``repeats`` < 1, ``threads`` < 1, an input is on another device than the model,
            or an input has no batch dimension.
        RuntimeError: If ptflops cannot count the model on this input.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> stats = profile(model, torch.randn(8, 4), warmup=0, repeats=1)
        >>> stats["params_total"], stats["flops_dense"]  # (4*3+3) + 3 ReLU outputs + (3*2+2)
        (23, 26)
    """
    _check_arguments(warmup, repeats, threads)
    inputs = as_input_tuple(example_input)
    _check_devices(model, inputs)
    macs = count_macs(model, inputs)
    params = list(model.parameters())
    state = [t for t in model.state_dict().values() if isinstance(t, Tensor)]
    return {
        "params_total": sum(p.numel() for p in params),
        "params_nonzero": sum(int(torch.count_nonzero(p.detach())) for p in params),
        "flops_dense": macs.total,
        "flops_effective": macs.effective(model),
        "latency_ms_per_batch": _latency_ms(model, inputs, warmup, repeats, threads),
        "state_dict_bytes": sum(t.numel() * t.element_size() for t in state),
        "sparse_bytes": sum(_sparse_bytes(t) for t in state),
    }


# -- arguments ------------------------------------------------------------------------------------------------------


def _check_arguments(warmup: int, repeats: int, threads: int | None) -> None:
    if warmup < 0:
        raise ValueError(f"`warmup` must be >= 0, got {warmup}.")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    if threads is not None and threads < 1:
        raise ValueError(f"`threads` must be None or >= 1, got {threads}.")


def _check_devices(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), None)
    if reference is None:  # nothing to compare with: a model without state runs anywhere
        return
    wrong = [str(t.device) for t in inputs if t.device != reference.device]
    if wrong:
        raise ValueError(
            f"`example_input` must be on the model's device ({reference.device}), got tensors on {wrong}; "
            "move them with `.to(device)` first."
        )


# -- latency --------------------------------------------------------------------------------------------------------


def _latency_ms(model: nn.Module, inputs: tuple[Tensor, ...], warmup: int, repeats: int, threads: int | None) -> float:
    modes = {module: module.training for module in model.modules()}
    previous_threads = torch.get_num_threads()
    cuda = inputs[0].device.type == "cuda"
    times = []
    try:
        model.eval()
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            for _ in range(repeats):
                # CUDA runs asynchronously: without a sync the clock would measure the kernel launches only
                if cuda:
                    torch.cuda.synchronize(inputs[0].device)
                start = time.perf_counter()
                model(*inputs)
                if cuda:
                    torch.cuda.synchronize(inputs[0].device)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        # per module, since a model may hold submodules frozen in eval mode while it trains
        for module, training in modes.items():
            module.training = training
    return statistics.median(times) * 1000.0


# -- storage --------------------------------------------------------------------------------------------------------


def _index_bytes(numel: int) -> int:
    return 4 if numel < 2**31 else 8


def _sparse_bytes(tensor: Tensor) -> int:
    nnz = int(torch.count_nonzero(tensor))
    return nnz * (tensor.element_size() + _index_bytes(tensor.numel()))
