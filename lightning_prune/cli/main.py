"""``main``, the ``lightning-prune`` console script: LightningCLI's subcommands plus a table of extra ones (``compare``,
``export``), each imported when it runs (``compare`` builds on ``app``, and brings pandas and matplotlib)."""

import argparse
import contextlib
import sys
from collections.abc import Callable

from jsonargparse import DefaultHelpFormatter

from lightning_prune.cli.app import LightningPruneCLI, arguments_alone
from lightning_prune.data.hub import DataSourceError

__all__ = ["EXTRA_SUBCOMMANDS", "main"]


def _compare(argv: list[str]) -> None:
    # imported when asked for: compare imports this package's LightningPruneCLI (and pandas, matplotlib)
    from lightning_prune.compare.cli import compare_main

    compare_main(argv)


def _export(argv: list[str]) -> None:
    from lightning_prune.cli.export import export_main

    export_main(argv)


# name -> (what runs it, one line of help): the subcommands LightningCLI does not know
EXTRA_SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "compare": (_compare, "run pruned and unpruned arms over seeds, with statistics and a report"),
    "export": (_export, "write the compact dense model of a checkpoint"),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the epilog's line breaks (the list of extra subcommands)."""


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script: LightningCLI subcommands, ``compare``, ``export``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_SUBCOMMANDS:
        EXTRA_SUBCOMMANDS[argv[0]][0](argv[1:])
        return
    epilog = "extra subcommands:\n" + "\n".join(
        f"  {name:<10} {help_text} (lightning-prune {name} --help)"
        for name, (_, help_text) in EXTRA_SUBCOMMANDS.items()
    )
    try:
        with arguments_alone() if args is not None else contextlib.nullcontext():
            LightningPruneCLI(args=args, parser_kwargs={"epilog": epilog, "formatter_class": _HelpFormatter})
    except DataSourceError as err:
        print(f"lightning-prune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
