"""The result of one evaluation, as every consumer reads it: the logs, the printed lines, the
tables, the report and the figures.

A ``Scores`` keeps the per-query results (first-match rank, AP, INP, whether the query has
a valid match) and the distance matrix they were computed from, so that nothing downstream
ranks the gallery again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dualattn.evaluation.verification import rate_name

# The rates of a result (fractions), in the order they are printed and logged; its counts are
# "valid_queries" of "queries".
RATES = ("rank1", "rank5", "rank10", "mAP", "mINP")


@dataclasses.dataclass(frozen=True, eq=False)
class Scores:
    """CMC, mAP and mINP of a query x gallery distance matrix, by the Market-1501 protocol.

    ``cmc[k]`` is the fraction of valid queries whose first true match is within the top k+1;
    ``ap``, ``inp`` and ``first_rank`` (0-based, among the gallery items the protocol keeps)
    are per query and meaningful where ``valid``; ``distances`` is the matrix scored (after
    re-ranking, when that was on). Rates are fractions, over the valid queries.
    """
    cmc: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    first_rank: np.ndarray
    valid: np.ndarray
    distances: np.ndarray
    # {fpr: TPR@FPR} over the same pairs (dualattn.evaluation.verification), where computed.
    tpr_at_fpr: dict = dataclasses.field(default_factory=dict)

    @property
    def mAP(self) -> float:  # noqa: N802 - the name every ReID paper uses
        return float(self.ap[self.valid].mean())

    @property
    def mINP(self) -> float:  # noqa: N802
        return float(self.inp[self.valid].mean())

    @property
    def valid_queries(self) -> int:
        return int(self.valid.sum())

    @property
    def queries(self) -> int:
        return int(self.valid.size)

    def rank(self, k: int) -> float:
        """The fraction of valid queries with a true match in the top ``k`` (CMC at k)."""
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def rates(self) -> dict:
        """The rates of ``RATES`` (fractions) and the query counts: a logged row's values."""
        return {"rank1": self.rank(1), "rank5": self.rank(5), "rank10": self.rank(10),
                "mAP": self.mAP, "mINP": self.mINP,
                **{rate_name(f): v for f, v in self.tpr_at_fpr.items()},
                "valid_queries": self.valid_queries, "queries": self.queries}

    def coverage(self) -> str:
        """A query whose identity has no image in the gallery from another camera has no valid
        match, and the rates are over the others (the standard protocol): say how many."""
        return f"{self.valid_queries} of {self.queries} queries have a valid match"

    def describe(self) -> str:
        """One line: the rates in percent, then how many queries they cover."""
        rates = self.rates()
        verification = "".join(f"  TPR@FPR={f:.0e} {100 * v:.2f}%"
                               for f, v in self.tpr_at_fpr.items())
        return ("  ".join(f"{k} {100 * rates[k]:.2f}%" for k in RATES) + verification
                + f"  ({self.coverage()})")


def format_table(rows: list[tuple[str, int, Scores]]) -> str:
    """The rows' rates side by side (name, training step, scores), and how many queries they
    cover (the same test split for every row)."""
    width = max(12, *(len(name) + 2 for name, _, _ in rows))
    fprs = list(rows[0][2].tpr_at_fpr)  # the same for every row
    head = (f"{'checkpoint':<{width}}{'step':>8}" + "".join(f"{k:>9}" for k in RATES)
            + "".join(f"{f'TPR@{f:.0e}':>12}" for f in fprs))
    lines = [head, "-" * len(head)]
    for name, step, scores in rows:
        rates = scores.rates()
        lines.append(f"{name:<{width}}{step:>8}"
                     + "".join(f"{100 * rates[k]:>8.2f}%" for k in RATES)
                     + "".join(f"{100 * scores.tpr_at_fpr.get(f, np.nan):>11.2f}%"
                               for f in fprs))
    lines.append(rows[0][2].coverage())
    return "\n".join(lines)
