"""The comparison's W&B summary run: a run of job type ``summary`` in the comparison's group, with its tables and
plots (each training run of the group logs itself, see ``runner``)."""

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_prune.cli.wandb_mode import choose_wandb_mode


def log_summary_run(
    project: str,
    group: str,
    directory: Path,
    config: dict[str, Any],
    tables: Mapping[str, pd.DataFrame],
    plots: Sequence[Path],
) -> str | None:
    """Log ``tables`` (as ``wandb.Table``, under their keys) and ``plots`` (as ``plots/<stem>``) to a W&B run named
    ``<group>-summary`` in ``group``, its files in ``directory``.

    Returns:
        Where the run is (its URL online, its folder offline), or None when W&B failed (a warning says why).
    """
    import wandb

    choose_wandb_mode()  # offline rather than a prompt or a hang
    try:
        run = wandb.init(project=project, group=group, job_type="summary", name=f"{group}-summary",
                         dir=str(directory), config=config)  # fmt: skip
        run.log(
            {
                **{key: wandb.Table(dataframe=table) for key, table in tables.items()},
                **{f"plots/{path.stem}": wandb.Image(str(path)) for path in plots},
            }
        )
        where = run.url or str(Path(run.dir).parent)
        run.finish()
        return where
    except Exception as err:  # the report matters more than its copy in W&B
        warnings.warn(f"lightning-prune compare: could not log the summary run to W&B: {err}", stacklevel=2)
        return None
