"""The results of a comparison as small typed dataclasses, and their JSON form (``summary.json``).

Only the standard library: the statistics (``stats``) build these, the report reads them, and ``to_json`` /
``from_json`` turn them into ``summary.json``'s structure and back (``load_results``).
"""

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any


class NoTest(str, Enum):
    """Why a test (or an effect size) has no value: the data cannot support it."""

    TOO_FEW_SEEDS = "too_few_seeds"
    NO_VARIANCE = "no_variance"


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
    ``no_test`` then says why, ``note`` in words."""

    __test__ = False  # not a pytest test class

    statistic: float | None = None
    p_value: float | None = None
    df: float | None = None
    note: str = ""
    no_test: NoTest | None = None

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "p_value": self.p_value, "df": self.df, "note": self.note,
                "no_test": None if self.no_test is None else self.no_test.value}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TestResult":
        no_test = NoTest(data["no_test"]) if data.get("no_test") else _NO_TEST_OF_OLD_NOTE.get(data.get("note", ""))
        return cls(data.get("statistic"), data.get("p_value"), data.get("df"), data.get("note", ""), no_test)


@dataclass(frozen=True)
class ArmStats:
    """One metric of one arm over its finished seeds: mean, sample standard deviation, t-based and bootstrap
    confidence intervals of the mean. ``note`` says why a value is missing (no run, one seed)."""

    n: int
    mean: float | None = None
    std: float | None = None
    t_ci: tuple[float, float] | None = None
    bootstrap_ci: tuple[float, float] | None = None
    note: str = ""

    @property
    def t_half_width(self) -> float | None:
        """Half the width of the t-based interval: the ``± x`` of ``mean ± x``."""
        return None if self.t_ci is None else (self.t_ci[1] - self.t_ci[0]) / 2

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "t_ci": _list(self.t_ci),
                "bootstrap_ci": _list(self.bootstrap_ci), "note": self.note}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ArmStats":
        return cls(data["n"], data.get("mean"), data.get("std"), _pair(data.get("t_ci")),
                   _pair(data.get("bootstrap_ci")), data.get("note", ""))  # fmt: skip


@dataclass(frozen=True)
class PairComparison:
    """Every test of one metric between two arms; differences are ``other - reference``, paired by seed."""

    n_reference: int
    n_other: int
    n_pairs: int
    mean_reference: float | None
    mean_other: float | None
    difference: float | None
    # how far apart the arms can be, seed for seed: "within 0.1 points" is read off this interval
    paired_difference_t_ci: tuple[float, float] | None
    paired_t: TestResult
    welch_t: TestResult
    mann_whitney_u: TestResult
    cohens_d: TestResult

    TESTS = ("paired_t", "welch_t", "mann_whitney_u", "cohens_d")

    def to_json(self) -> dict[str, Any]:
        return {
            "n_reference": self.n_reference,
            "n_other": self.n_other,
            "n_pairs": self.n_pairs,
            "mean_reference": self.mean_reference,
            "mean_other": self.mean_other,
            "difference": self.difference,
            "paired_difference_t_ci": _list(self.paired_difference_t_ci),
            **{name: getattr(self, name).to_json() for name in self.TESTS},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PairComparison":
        tests = {name: TestResult.from_json(data[name]) for name in cls.TESTS}
        return cls(data["n_reference"], data["n_other"], data["n_pairs"], data["mean_reference"], data["mean_other"],
                   data["difference"], _pair(data.get("paired_difference_t_ci")), **tests)  # fmt: skip


@dataclass(frozen=True)
class ArmPair:
    """One pair of arms compared on every metric: ``arm`` against ``reference``."""

    arm: str
    reference: str
    metrics: dict[str, PairComparison]

    def to_json(self) -> dict[str, Any]:
        return {"arm": self.arm, "reference": self.reference,
                "metrics": {name: result.to_json() for name, result in self.metrics.items()}}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ArmPair":
        metrics = {name: PairComparison.from_json(result) for name, result in data["metrics"].items()}
        return cls(data["arm"], data["reference"], metrics)


@dataclass(frozen=True)
class Summary:
    """What ``summary.json`` holds: how the comparison ran, every arm's statistics and every pair's tests.

    ``primary_test`` (name, reason) and ``metrics`` (label, unit, scale of each) describe the analysis for readers of
    the file.
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
            "primary_test": self.primary_test,
            "alpha": self.alpha,
            "confidence": self.confidence,
            "metrics": self.metrics,
            "per_arm": {
                arm: {name: s.to_json() for name, s in metrics.items()} for arm, metrics in self.per_arm.items()
            },
            "comparisons": [pair.to_json() for pair in self.comparisons],
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
        )


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as JSON, then rename: a kill mid-write never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(content, indent=2, default=str))
    partial.replace(path)


def now() -> str:
    """The UTC time to the second, ISO 8601: when a run started or ended, when a summary was made."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
