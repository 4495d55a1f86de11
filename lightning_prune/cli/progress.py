"""Progress for runs without a terminal (nohup, CI logs, SLURM jobs): plain lines instead of a redrawn bar.

Rich and tqdm redraw one line in place, which a log file shows as nothing until the epoch ends (or as a wall of
carriage returns). :class:`PlainProgressBar` prints a short line every few percent of an epoch or every few seconds,
whichever comes first: epoch, step, loss, throughput and the time left in the epoch.
"""

import sys
import time
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ProgressBar

PROGRESS_BARS = ("RichProgressBar", "TQDMProgressBar")


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``.

    Example:
        >>> format_duration(3725), format_duration(185), format_duration(42.4)
        ('1h02m', '3m05s', '42s')
    """
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PlainProgressBar(ProgressBar):
    """A progress bar for logs: one line every ``every_percent`` of an epoch or ``every_seconds``, whichever first.

    Args:
        every_percent: Print at least this often, in percent of the epoch's batches.
        every_seconds: Print at least this often, in seconds.
    """

    def __init__(self, every_percent: float = 5.0, every_seconds: float = 30.0) -> None:
        super().__init__()
        self.every_percent = every_percent
        self.every_seconds = every_seconds
        self._enabled = True
        self._epoch_start = 0.0
        self._last_print = 0.0
        self._last_done = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _say(self, line: str) -> None:
        if self._enabled:
            print(line, file=sys.stdout, flush=True)

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._epoch_start = self._last_print = time.monotonic()
        self._last_done = 0

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done, total = batch_idx + 1, self.total_train_batches
        now = time.monotonic()
        step = max(1, int(total * self.every_percent / 100)) if total != float("inf") else None
        # due every `step` batches (a multiple of it was reached since the last line) or every few seconds
        due = now - self._last_print >= self.every_seconds or (
            step is not None and done // step > self._last_done // step
        )
        if not due and done != total:
            return
        self._last_print, self._last_done = now, done
        elapsed = now - self._epoch_start
        rate = done / elapsed if elapsed > 0 else float("nan")
        progress = f"{done}/{total} ({100 * done / total:.0f}%)" if step is not None else f"{done}"
        left = f", {format_duration((total - done) / rate)} left" if step is not None and rate > 0 else ""
        self._say(f"Epoch {trainer.current_epoch} step {progress}{self._metrics(trainer, pl_module, 'train')}, "
                  f"{rate:.2f} it/s{left}")  # fmt: skip

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not trainer.sanity_checking:
            self._say(f"Epoch {trainer.current_epoch} validation{self._metrics(trainer, pl_module, 'val')}")

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        took = format_duration(time.monotonic() - self._epoch_start)
        self._say(f"Epoch {trainer.current_epoch} done in {took}{self._metrics(trainer, pl_module)}")

    def _metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule", prefix: str = "") -> str:
        shown = [
            f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
            for name, value in self.get_metrics(trainer, pl_module).items()
            if name != "v_num" and name.startswith(prefix)
        ]
        return (", " + ", ".join(shown)) if shown else ""


def use_plain_progress_when_piped(config: Namespace, stream: Any = None) -> bool:
    """When the output is not a terminal, swap a configured Rich / tqdm progress bar in a LightningCLI ``config`` for
    :class:`PlainProgressBar` (or add one where Lightning would add its tqdm bar). Returns whether it did. With
    ``--trainer.enable_progress_bar false`` it drops the configured bar instead: Lightning refuses a bar callback
    then, and the task configs list one."""
    stream = stream if stream is not None else sys.stdout
    configured = list(config.get("trainer.callbacks") or [])
    names = [str(getattr(cb, "class_path", type(cb).__name__)).rsplit(".", 1)[-1] for cb in configured]
    if config.get("trainer.enable_progress_bar") is False:
        config["trainer.callbacks"] = [
            cb for cb, name in zip(configured, names, strict=True) if "ProgressBar" not in name
        ]
        return False
    if stream.isatty():
        return False
    plain = Namespace(class_path=f"{__name__}.PlainProgressBar", init_args=Namespace())
    callbacks = [plain if name in PROGRESS_BARS else cb for cb, name in zip(configured, names, strict=True)]
    if not any("ProgressBar" in name for name in names):  # Lightning would add its tqdm bar
        callbacks.append(plain)
    config["trainer.callbacks"] = callbacks
    return True
