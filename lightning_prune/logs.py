"""Handing the callback's figures to Lightning's loggers: once per decision, in epoch and in step mode.

A value ``self.log()``-ged ``on_step`` from a callback stays in Lightning's results and is sent again at every later
step, so decisions made after a step go to the loggers directly, once, and into ``callback_metrics`` for the other
callbacks (a checkpoint monitoring ``pruning/sparsity``, say). Decisions made at an epoch's end use ``pl_module.log``
with ``on_epoch=True``, so every logger gets them under exactly their names.
"""

from collections.abc import Mapping

import lightning as L
import torch

from lightning_prune.controller import Action, IntervalRecord


def decision_metrics(entry: IntervalRecord, skipped_steps: int, readouts: Mapping[str, float]) -> dict[str, float]:
    """What one decision logs, under the names DESIGN.md fixes: the interval's record, the steps left out of the
    statistics for non-finite gradients, and the pruner's read-outs (weights left, FLOPs, per-layer sparsity)."""
    metrics = {"pruning/sparsity": entry["sparsity"], "pruning/ratio": entry["ratio"],
               "pruning/action": float(Action[entry["action"].upper()]),
               "pruning/skipped_steps": float(skipped_steps), **readouts}  # fmt: skip
    if entry["grad_norm"] is not None:
        metrics["grad_norm/total"] = entry["grad_norm"]
    if entry.get("grad_norm_max") is not None:
        metrics["grad_norm/max"] = entry["grad_norm_max"]
    return metrics


def log_decision(trainer: "L.Trainer", pl_module: "L.LightningModule", metrics: Mapping[str, float], per_step: bool):
    """Log one decision's ``metrics`` exactly once."""
    if not per_step:
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


def log_final(trainer: "L.Trainer", profile: Mapping[str, float] | None) -> None:
    """The final model's profile, as ``pruning/final/<name>``, to every logger (after fit: ``self.log`` is closed)."""
    for logger in trainer.loggers if profile is not None else ():
        logger.log_metrics({f"pruning/final/{k}": float(v) for k, v in profile.items()}, trainer.global_step)
