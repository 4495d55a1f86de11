"""Dense vs compact (structurally pruned, exported) models of the three tasks at several sparsity levels.

Channels are chosen once by weight magnitude, with the same group finding, ranking and export as the callback, on
untrained networks: what is measured is how FLOPs and latency follow the removed share of the budget, not accuracy.
``--budget weights`` removes that share of the prunable weights (lowest magnitude per weight saved first), ``flops``
that share of their MACs (lowest magnitude first), as ``RealTimePruningCallback(budget=...)`` does. Latency is the
median of repeated batches after warm-up, dense and compact measured alternately in one process (CPU threads pinned;
CUDA too where a GPU is present).

    python bench/speedup.py --sparsity 0.5 0.75 0.9
    python bench/speedup.py --tasks cifar10 --budget weights flops --sparsity 0.6 0.7
"""

import argparse
import copy
import statistics

import torch

from lightning_prune import profile
from lightning_prune.flops import count_macs
from lightning_prune.layers import classifier_name
from lightning_prune.models import MNISTCNN, CIFARResNet18, LSTMClassifier
from lightning_prune.structured import compact_copy, default_roots, find_groups, select

from common import record, table


def example(task: str, batch: int, device: str):
    if task == "mnist":
        return torch.randn(batch, 1, 28, 28, device=device)
    if task == "cifar10":
        return torch.randn(batch, 3, 32, 32, device=device)
    tokens = torch.randint(1, 20000, (batch, 256), device=device)
    return tokens, torch.full((batch,), 256, device=device)


def build(task: str) -> torch.nn.Module:
    return {"mnist": MNISTCNN, "cifar10": CIFARResNet18, "imdb": lambda: LSTMClassifier(hidden_size=256)}[task]()


def prune_once(
    model: torch.nn.Module, inputs, sparsity: float, budget: str = "weights", min_layer_density: float = 0.02
) -> torch.nn.Module:
    """Mask whole channels (lowest magnitude per weight, or per MAC, saved) holding ``sparsity`` of the prunable
    weights (or of their MACs), then export the compact copy (``model`` is left as it is)."""
    model = copy.deepcopy(model)
    roots = default_roots(model)
    groups, _ = find_groups(model, inputs, roots, classifier_name(model))
    params = dict(model.named_parameters())
    prunable = {n: p for n, p in params.items() if n.rsplit(".", 1)[0] in roots and "weight" in n.rsplit(".", 1)[1]}
    magnitude = {n: p.detach().abs() for n, p in params.items() if p.dim() > 1}
    if budget == "flops":
        costs = count_macs(model, inputs if isinstance(inputs, tuple) else (inputs,)).per_weight(model)
    else:
        costs = dict.fromkeys(prunable, 1.0)
    total = sum(costs.get(n, 0.0) * p.numel() for n, p in prunable.items())
    chosen = select(groups, params, magnitude, prunable, budget=sparsity * total, min_layer_density=min_layer_density,
                    entry_costs=costs, per_cost=budget == "weights")  # fmt: skip
    with torch.no_grad():
        for param, flat in chosen.items():
            params[param].view(-1)[flat] = 0
    return compact_copy(model, inputs, roots)


def latency(model, inputs, threads: int, rounds: int) -> float:
    return profile(model, inputs, threads=threads, warmup=3, repeats=rounds)["latency_ms_per_batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mnist", "cifar10", "imdb"])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument(
        "--budget",
        nargs="+",
        choices=["weights", "flops"],
        default=["weights"],
        help="what --sparsity counts: prunable weights or their MACs",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating dense/compact measurements")
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per measurement")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for task in args.tasks:
        torch.manual_seed(0)
        dense = build(task).eval()
        for budget, sparsity in [(b, s) for b in args.budget for s in args.sparsity]:
            compact = prune_once(dense, example(task, 2, "cpu"), sparsity, budget).eval()
            flops = profile(dense, example(task, 1, "cpu"), repeats=1)["flops_dense"]
            flops_compact = profile(compact, example(task, 1, "cpu"), repeats=1)["flops_dense"]
            params = sum(p.numel() for p in compact.parameters())
            row = [task, budget, sparsity, f"{params:,}", f"{flops / flops_compact:.2f}x"]
            for device in devices:
                dense_d, compact_d = dense.to(device), compact.to(device)
                for batch in (1, 64):
                    inputs = example(task, batch, device)
                    ratios = []
                    for _ in range(args.rounds):  # alternate, so drift hits both alike
                        base = latency(dense_d, inputs, args.threads, args.repeats)
                        ratios.append(base / latency(compact_d, inputs, args.threads, args.repeats))
                    row.append(f"{statistics.median(ratios):.2f}x ({base:.2f} ms dense)")
            dense = dense.cpu()
            rows.append(row)
            print(row, flush=True)
    header = ["task", "budget", "sparsity of the budget", "compact params", "FLOPs ratio"]
    header += [f"latency ratio {d} b{b}" for d in devices for b in (1, 64)]
    body = (
        f"Untrained networks, channels chosen by magnitude; latency ratio = dense / compact, median of {args.rounds} "
        f"alternating measurements of {args.repeats} batches each; CPU pinned to {args.threads} threads; IMDB "
        "sequences of 256 tokens.\n\n" + table(header, rows)
    )
    record("Structured speed-up: dense vs compact export", body)


if __name__ == "__main__":
    main()
