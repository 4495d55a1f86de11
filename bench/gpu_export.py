"""Latency of the compact export of a structured run against the unpruned model, on one device, after bench/gpu.sh.

Reads the final checkpoints (last.ckpt) of two runs of a `lightning-prune compare` folder, exports the structured one
with the same code as `lightning-prune export` (channels removed), and times both on the device at batch 64 and 1:
median of repeated batches after warm-up, synchronised on CUDA, dense and compact in this one process, nothing else
training. Writes a JSON file and prints it.

    python bench/gpu_export.py --runs runs/gpu/runs --dense unpruned-seed0 --compact flops-seed0 --device cuda
"""

import argparse
import json
import time
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from lightning_prune.cli.export import export_checkpoint
from lightning_prune.profiling import profile


def final_checkpoint(run_folder: Path) -> Path:
    """The run's last.ckpt (written at every epoch's end: the final, pruned model, not the best one)."""
    found = sorted(run_folder.rglob("last.ckpt"))
    if not found:
        raise FileNotFoundError(f"no last.ckpt under {run_folder}: did the run finish?")
    return found[-1]


def dense_backbone(ckpt: Path) -> torch.nn.Module:
    module = LightningModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    return getattr(module, "backbone", module)


def timed_export(ckpt: Path) -> tuple[torch.nn.Module, float]:
    """The compact model and the seconds its export took (on the CPU, as `lightning-prune export` runs)."""
    start = time.perf_counter()
    compact, _, _ = export_checkpoint(str(ckpt))
    return compact, time.perf_counter() - start


def measure(model: torch.nn.Module, device: str, batch: int, repeats: int) -> dict:
    model = model.to(device)
    inputs = torch.randn(batch, 3, 32, 32, device=device)
    figures = profile(model, inputs, warmup=max(3, repeats // 5), repeats=repeats)
    return {key: figures[key] for key in ("params_total", "flops_dense", "latency_ms_per_batch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="the compare output's runs/ folder")
    parser.add_argument("--dense", default="unpruned-seed0")
    parser.add_argument("--compact", default="flops-seed0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    options = parser.parse_args()

    dense = dense_backbone(final_checkpoint(options.runs / options.dense))
    compact, export_s = timed_export(final_checkpoint(options.runs / options.compact))
    result = {"device": options.device, "device_name": device_name(options.device), "export_s": export_s}
    for batch in (64, 1):
        d = measure(dense, options.device, batch, options.repeats)
        c = measure(compact, options.device, batch, options.repeats)
        speedup = d["latency_ms_per_batch"] / c["latency_ms_per_batch"]
        result[f"batch{batch}"] = {"dense": d, "compact": c, "speedup": speedup}
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    main()
