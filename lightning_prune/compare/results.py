"""The results of a comparison as small typed dataclasses, and their JSON form (``summary.json``).

Only the standard library: the statistics (``stats``, ``hypotheses``, ``testset``) build these, the report reads
them, and ``to_json`` / ``from_json`` turn them into ``summary.json``'s structure and back (``load_results``).
"""

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any


class NoTest(str, Enum):
    """Why a test (or an effect size) has no value: the data cannot support it, or the question is not one for a
    test."""

    TOO_FEW_SEEDS = "too_few_seeds"
    NO_VARIANCE = "no_variance"
    # the metric is the same in every run of an arm (parameters, FLOPs of a fixed schedule): values, not a test
    DETERMINISTIC = "deterministic"
    # no per-example test predictions, or the two runs were tested on different test sets
    NOT_RECORDED = "not_recorded"


class Conclusion(str, Enum):
    """What a pair's primary analysis concludes (test accuracy; margin ``M`` in points, Holm-adjusted p-values)."""

    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"  # TOST: the difference lies within +-M
    NON_INFERIOR = "non_inferior"  # the arm is not worse than the reference by more than M
    INCONCLUSIVE = "inconclusive"


def conclusion_text(conclusions: tuple[Conclusion, ...], margin: float) -> str:
    """The conclusions in words, the margin in points.

    Example:
        >>> conclusion_text((Conclusion.WORSE, Conclusion.NON_INFERIOR), 0.1)
        'worse; not worse by more than 0.1'
        >>> conclusion_text((Conclusion.EQUIVALENT,), 0.5)
        'equivalent within ±0.5'
    """
    words = {
        Conclusion.BETTER: "better",
        Conclusion.WORSE: "worse",
        Conclusion.EQUIVALENT: f"equivalent within ±{margin:g}",
        Conclusion.NON_INFERIOR: f"not worse by more than {margin:g}",
        Conclusion.INCONCLUSIVE: "inconclusive",
    }
    return "; ".join(words[c] for c in conclusions) if conclusions else "n/a"


# summary.json written before TestResult.no_test existed: the notes those versions wrote, word for word
_NO_TEST_OF_OLD_NOTE = {
    "no test possible: fewer than 2 seeds": NoTest.TOO_FEW_SEEDS,
    "no test possible: fewer than 2 seeds finished in both arms": NoTest.TOO_FEW_SEEDS,
    "no effect size: fewer than 2 seeds": NoTest.TOO_FEW_SEEDS,
    "no test possible: zero variance in both arms": NoTest.NO_VARIANCE,
    "no test possible: the paired differences have zero variance": NoTest.NO_VARIANCE,
    "no test possible: every value is the same": NoTest.NO_VARIANCE,
    "no effect size: zero variance in both arms": NoTest.NO_VARIANCE,
}


def _pair(values: Any) -> tuple[float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]))


def _list(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else list(pair)


@dataclass(frozen=True)
class TestResult:
    """One test's outcome. ``p_value`` (``statistic`` for an effect size) is None when the test is not possible:
    ``no_test`` then says why, ``note`` in words. ``method`` names how the p-value was computed (e.g. exact
    permutation) where there is a choice."""

    __test__ = False  # not a pytest test class

    statistic: float | None = None
    p_value: float | None = None
    df: float | None = None
    note: str = ""
    no_test: NoTest | None = None
    method: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "p_value": self.p_value, "df": self.df, "note": self.note,
                "no_test": None if self.no_test is None else self.no_test.value, "method": self.method}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "TestResult":
        if data is None:
            return cls()
        no_test = NoTest(data["no_test"]) if data.get("no_test") else _NO_TEST_OF_OLD_NOTE.get(data.get("note", ""))
        return cls(data.get("statistic"), data.get("p_value"), data.get("df"), data.get("note", ""), no_test,
                   data.get("method", ""))  # fmt: skip


@dataclass(frozen=True)
class ArmStats:
    """One metric of one arm over its finished seeds that have a value: mean, sample standard deviation, the t-based
    95% confidence interval of the mean and, from 10 seeds on, the percentile bootstrap interval (below 10 seeds it
    undercovers: with 3 seeds it is the range of the values). ``varies`` is False for a metric that is the same in
    every run; ``note`` says why a value is missing (no run, one seed)."""

    n: int
    mean: float | None = None
    std: float | None = None
    t_ci: tuple[float, float] | None = None
    bootstrap_ci: tuple[float, float] | None = None
    note: str = ""
    varies: bool = True

    @property
    def t_half_width(self) -> float | None:
        """Half the width of the t-based interval: the ``± x`` of ``mean ± x``."""
        return None if self.t_ci is None else (self.t_ci[1] - self.t_ci[0]) / 2

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "t_ci": _list(self.t_ci),
                "bootstrap_ci": _list(self.bootstrap_ci), "note": self.note, "varies": self.varies}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ArmStats":
        return cls(data["n"], data.get("mean"), data.get("std"), _pair(data.get("t_ci")),
                   _pair(data.get("bootstrap_ci")), data.get("note", ""), data.get("varies", True))  # fmt: skip


@dataclass(frozen=True)
class PairComparison:
    """Every statistic of one metric between two arms, all on the seeds finished (with a value) in both: ``n_pairs``
    of them, listed in ``seeds``. Differences are ``other - reference``; ``n_reference`` and ``n_other`` count each
    arm's seeds with a value, paired or not. ``cohens_d`` uses the pooled standard deviation of the two arms,
    ``cohens_dz`` the standard deviation of the paired differences (the effect size of the paired test)."""

    n_reference: int
    n_other: int
    n_pairs: int
    mean_reference: float | None
    mean_other: float | None
    difference: float | None
    # the t-based 95% interval of the seed-by-seed differences; None without variance (no zero-width interval)
    paired_difference_t_ci: tuple[float, float] | None
    paired_t: TestResult
    welch_t: TestResult
    mann_whitney_u: TestResult
    cohens_d: TestResult
    cohens_dz: TestResult = field(default_factory=TestResult)
    seeds: list[int] = field(default_factory=list)

    TESTS = ("paired_t", "welch_t", "mann_whitney_u", "cohens_d", "cohens_dz")

    def to_json(self) -> dict[str, Any]:
        return {
            "n_reference": self.n_reference,
            "n_other": self.n_other,
            "n_pairs": self.n_pairs,
            "seeds": self.seeds,
            "mean_reference": self.mean_reference,
            "mean_other": self.mean_other,
            "difference": self.difference,
            "paired_difference_t_ci": _list(self.paired_difference_t_ci),
            **{name: getattr(self, name).to_json() for name in self.TESTS},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PairComparison":
        tests = {name: TestResult.from_json(data.get(name)) for name in cls.TESTS}
        return cls(data["n_reference"], data["n_other"], data["n_pairs"], data["mean_reference"], data["mean_other"],
                   data["difference"], _pair(data.get("paired_difference_t_ci")), **tests,
                   seeds=list(data.get("seeds", [])))  # fmt: skip


@dataclass(frozen=True)
class PrimaryAnalysis:
    """The primary endpoint (test accuracy) of one pair against the margin ``M`` (in the metric's units: 0.001 is
    0.1 points), on the paired seeds.

    ``ci90`` is the t-based 90% interval of the paired differences: TOST (equivalence within +-M) rejects at 5% when it
    lies inside (-M, M), the non-inferiority test (not worse by more than M) when its low end lies above -M. The
    ``*_holm`` p-values are Holm-adjusted over the ``holm_family`` pairs of the report that have a p-value;
    ``conclusions`` are drawn from them.
    """

    margin: float
    n_pairs: int
    difference: float | None
    ci90: tuple[float, float] | None
    tost: TestResult
    non_inferiority: TestResult
    p_holm: float | None = None
    tost_p_holm: float | None = None
    non_inferiority_p_holm: float | None = None
    holm_family: int = 0
    conclusions: tuple[Conclusion, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"margin": self.margin, "n_pairs": self.n_pairs, "difference": self.difference,
                "ci90": _list(self.ci90), "tost": self.tost.to_json(),
                "non_inferiority": self.non_inferiority.to_json(), "p_holm": self.p_holm,
                "tost_p_holm": self.tost_p_holm, "non_inferiority_p_holm": self.non_inferiority_p_holm,
                "holm_family": self.holm_family,
                "conclusions": [c.value for c in self.conclusions]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PrimaryAnalysis":
        return cls(data["margin"], data["n_pairs"], data["difference"], _pair(data.get("ci90")),
                   TestResult.from_json(data["tost"]), TestResult.from_json(data["non_inferiority"]),
                   data.get("p_holm"), data.get("tost_p_holm"), data.get("non_inferiority_p_holm"),
                   data.get("holm_family", 0),
                   tuple(Conclusion(c) for c in data.get("conclusions", [])))  # fmt: skip


@dataclass(frozen=True)
class TestSetComparison:
    """Test accuracy of two runs of the same seed, example by example over the same test set: the uncertainty that
    comes from the test set itself. ``only_other`` counts the examples the arm gets right and the reference wrong,
    ``only_reference`` the reverse (McNemar's discordant pairs); ``bootstrap_ci`` is the paired percentile bootstrap
    95% interval of the accuracy difference over the test examples."""

    __test__ = False

    seed: int
    n_examples: int | None = None
    accuracy_reference: float | None = None
    accuracy_other: float | None = None
    only_other: int | None = None
    only_reference: int | None = None
    bootstrap_ci: tuple[float, float] | None = None
    mcnemar: TestResult = field(default_factory=TestResult)

    @property
    def difference(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_other is None:
            return None
        return self.accuracy_other - self.accuracy_reference

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "n_examples": self.n_examples, "accuracy_reference": self.accuracy_reference,
                "accuracy_other": self.accuracy_other, "only_other": self.only_other,
                "only_reference": self.only_reference, "bootstrap_ci": _list(self.bootstrap_ci),
                "mcnemar": self.mcnemar.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TestSetComparison":
        return cls(data["seed"], data.get("n_examples"), data.get("accuracy_reference"), data.get("accuracy_other"),
                   data.get("only_other"), data.get("only_reference"), _pair(data.get("bootstrap_ci")),
                   TestResult.from_json(data.get("mcnemar")))  # fmt: skip


@dataclass(frozen=True)
class ArmPair:
    """One pair of arms compared on every metric: ``arm`` against ``reference``; the primary analysis of test
    accuracy, and the per-seed comparisons over the test examples."""

    arm: str
    reference: str
    metrics: dict[str, PairComparison]
    primary: PrimaryAnalysis | None = None
    test_set: list[TestSetComparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"arm": self.arm, "reference": self.reference,
                "metrics": {name: result.to_json() for name, result in self.metrics.items()},
                "primary": None if self.primary is None else self.primary.to_json(),
                "test_set": [seed.to_json() for seed in self.test_set]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ArmPair":
        metrics = {name: PairComparison.from_json(result) for name, result in data["metrics"].items()}
        primary = PrimaryAnalysis.from_json(data["primary"]) if data.get("primary") else None
        test_set = [TestSetComparison.from_json(seed) for seed in data.get("test_set", [])]
        return cls(data["arm"], data["reference"], metrics, primary, test_set)


@dataclass(frozen=True)
class Summary:
    """What ``summary.json`` holds: how the comparison ran, every arm's statistics and every pair's tests.

    ``primary_test`` (name, reason) and ``metrics`` (label, unit, scale of each) describe the analysis for readers of
    the file; ``margin`` is the equivalence / non-inferiority margin in points of test accuracy and
    ``margin_source`` where it came from. ``provenance`` holds the code and versions the runs were made with,
    ``reused_runs`` the finished runs kept although they were made by other code or config (``--reuse-stale``),
    ``missing_values`` the metrics that finished runs lack, and ``warnings`` what a reader must know first.
    """

    group: str
    command: list[str]
    created: str
    arms: list[str]
    seeds: list[int]
    runs: dict[str, int]
    primary_test: dict[str, str]
    alpha: float
    confidence: float
    metrics: dict[str, dict[str, Any]]
    per_arm: dict[str, dict[str, ArmStats]]
    comparisons: list[ArmPair] = field(default_factory=list)
    wandb: str | None = None
    margin: float | None = None
    margin_source: str = ""
    finished: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    reused_runs: list[dict[str, Any]] = field(default_factory=list)
    missing_values: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def stats(self, arm: str, metric: str) -> ArmStats | None:
        return self.per_arm.get(arm, {}).get(metric)

    def mean(self, arm: str, metric: str) -> float | None:
        described = self.stats(arm, metric)
        return None if described is None else described.mean

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "command": self.command,
            "created": self.created,
            "arms": self.arms,
            "seeds": self.seeds,
            "runs": self.runs,
            "finished": self.finished,
            "primary_test": self.primary_test,
            "alpha": self.alpha,
            "confidence": self.confidence,
            "margin": self.margin,
            "margin_source": self.margin_source,
            "metrics": self.metrics,
            "per_arm": {
                arm: {name: s.to_json() for name, s in metrics.items()} for arm, metrics in self.per_arm.items()
            },
            "comparisons": [pair.to_json() for pair in self.comparisons],
            "provenance": self.provenance,
            "reused_runs": self.reused_runs,
            "missing_values": self.missing_values,
            "warnings": self.warnings,
            "wandb": self.wandb,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Summary":
        per_arm = {arm: {name: ArmStats.from_json(s) for name, s in metrics.items()}
                   for arm, metrics in data["per_arm"].items()}  # fmt: skip
        return cls(
            group=data["group"],
            command=data["command"],
            created=data["created"],
            arms=data["arms"],
            seeds=data["seeds"],
            runs=data["runs"],
            primary_test=data["primary_test"],
            alpha=data["alpha"],
            confidence=data["confidence"],
            metrics=data["metrics"],
            per_arm=per_arm,
            comparisons=[ArmPair.from_json(pair) for pair in data["comparisons"]],
            wandb=data.get("wandb"),
            margin=data.get("margin"),
            margin_source=data.get("margin_source", ""),
            finished=data.get("finished", {}),
            provenance=data.get("provenance", {}),
            reused_runs=data.get("reused_runs", []),
            missing_values=data.get("missing_values", []),
            warnings=data.get("warnings", []),
        )


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as JSON, then rename: a kill mid-write never leaves half a file behind. The partial file's
    name is the writer's own, so that processes writing the same file at once (``--shard``) never rename each
    other's half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")
    partial.write_text(json.dumps(content, indent=2, default=str))
    partial.replace(path)


def now() -> str:
    """The UTC time to the second, ISO 8601: when a run started or ended, when a summary was made."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
