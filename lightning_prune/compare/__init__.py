"""``lightning-prune compare``: pruned vs unpruned (and baseline) runs over seeds, with statistics and a report.

Every arm trains from the same configs with the same seeds: seed ``k`` gives every arm the same initial weights and the
same data order, so the runs pair up by seed and the paired t-test is the primary test; every statistic of a pair uses
only the seeds finished in both arms. Each run lives in ``OUTPUT/runs/<arm>-seed<k>/`` with a ``status.json`` (its
commit, config hash and versions included) and ``test_correct.npz`` (which test examples it gets right); running the
same command again skips the finished runs of the same code and config and retries the others. The results go to
``results.csv`` (a row per run), ``curves.csv`` (a row per run and epoch), ``summary.json`` (the statistics),
``report.md`` and PNG plots in ``OUTPUT``, and, with W&B, to one W&B group per comparison plus a summary run.

Modules, from pure to Lightning:

- ``results``: the typed results (``TestResult``, ``ArmStats``, ``PairComparison``, ``PrimaryAnalysis``,
  ``TestSetComparison``, ``ArmPair``, ``Summary``) and their JSON form; standard library only.
- ``hypotheses``: the tests and effect sizes over seeds (paired t, TOST, non-inferiority, Welch t, Mann-Whitney U,
  Cohen's d and d_z, Holm); numpy and scipy only.
- ``stats``: the metrics, intervals, one arm's description, a pair's statistics on its paired seeds, the primary
  analysis and its conclusions; numpy and scipy only.
- ``testset``: per-example test results of a run, McNemar and the paired bootstrap over test examples; numpy and
  scipy only.
- ``provenance``: commit, dirty tree, config hashes and versions of a run; which finished runs are stale.
- ``baselines``: the baselines' pruning schedules and their ``ModelPruning`` callback.
- ``recorder``: ``CurveRecorder``, the per-epoch curves and final sparsity of a run; ``TestCorrectRecorder``.
- ``runner``: one run (``run_one``), its ``status.json`` (``run_and_record``), the plan (``Comparison``).
- ``claims``: claiming a run atomically in ``OUTPUT/claims/``, heartbeats, stale claims; standard library only.
- ``passes``: a process's pass over the runs (``run_comparison``: its ``--shard``, claims, resume) and every run's
  record read back from disk (``collect``).
- ``workers``: ``--jobs``, worker processes with a device or a share of the CPU cores each.
- ``summary``: ``results.csv``'s and ``curves.csv``'s frames and ``summarize``, the ``Summary`` of a comparison.
- ``tables``: the tables and readings; ``plots``: the figures; ``wandb_summary``: the W&B summary run.
- ``report``: writes every output (``write_outputs``; once per state when shards finish together), ``report.md``
  and ``load_results``.
- ``cli``: the ``compare`` command line, ``compare_main``.

This package imports none of them, so that ``lightning_prune.compare.stats`` stays light: import the module you need.
"""
