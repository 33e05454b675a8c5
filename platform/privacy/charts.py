"""The lifetime ε chart of a dataset, drawn with the runs app's SVG line chart."""

from __future__ import annotations

from collections.abc import Sequence

from privacy.models import LedgerMirror
from runs.charts import Series, line_chart


def lifetime_chart(mirror: LedgerMirror, points: Sequence[tuple[float, float]]) -> str:
    """Cumulative lifetime ε after each recorded round, against the node's cap."""
    if not points:
        return line_chart(title="Lifetime ε", series=[], x_label="", y_label="")
    # A ledger starts at ε = 0 before its first round, which also puts 0 on the y axis.
    spent = [(0.0, 0.0), *points]
    last = spent[-1][0]
    cap = mirror.max_lifetime_epsilon
    series = [Series(f"ε ({mirror.accountant})", spent), Series("cap", [(0.0, cap), (last, cap)])]
    return line_chart(
        title=f"Lifetime ε of {mirror.dataset_id} ({mirror.conversion}, δ={mirror.delta:g})",
        series=series,
        x_label="Round in the ledger",
        y_label="ε",
    )
