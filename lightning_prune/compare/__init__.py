"""``lightning-prune compare``: pruned vs unpruned (and baseline) runs over seeds, with statistics and a report.

Every arm trains from the same configs with the same seeds: seed ``k`` gives every arm the same initial weights and the
same data order, so the runs pair up by seed and the paired t-test is the primary test. Each run lives in
``OUTPUT/runs/<arm>-seed<k>/`` with a ``status.json``; running the same command again skips the finished runs and
retries the others. The results go to ``results.csv`` (a row per run), ``curves.csv`` (a row per run and epoch),
``summary.json`` (the statistics), ``report.md`` and PNG plots in ``OUTPUT``, and, with W&B, to one W&B group per
comparison plus a summary run.

Modules, from pure to Lightning:

- ``results``: the typed results (``TestResult``, ``ArmStats``, ``PairComparison``, ``ArmPair``, ``Summary``) and
  their JSON form; standard library only.
- ``stats``: the metrics and the statistics (intervals, tests); numpy and scipy only.
- ``baselines``: the baselines' pruning schedules and their ``ModelPruning`` callback.
- ``recorder``: ``CurveRecorder``, the per-epoch curves and final sparsity of a run.
- ``runner``: one run (``run_one``) and the loop over them with ``status.json`` and resume (``run_comparison``).
- ``plots``: the figures. ``wandb_summary``: the W&B summary run.
- ``report``: ``results.csv``, ``curves.csv``, ``summary.json``, the tables and ``report.md``; ``load_results``.
- ``cli``: the ``compare`` command line, ``compare_main``.

This package imports none of them, so that ``lightning_prune.compare.stats`` stays light: import the module you need.
"""
