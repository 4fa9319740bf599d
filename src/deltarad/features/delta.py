"""Change between timepoints: absolute (later - earlier) and relative, safely.

Every later timepoint is compared with the baseline (and optionally with the timepoint before
it); :func:`delta_names` names the columns.

Relative change ``(f - b) / |b|`` explodes where the baseline is near zero (skewness, a
correlation, a wavelet mean), which makes it a false "strong" signal. The rule here: per
feature, the baseline counts as near zero when ``|b| <= max(abs_floor, rel_floor * m)``, with
``m`` the cohort median of ``|b|`` for that feature; there the relative change is NA (missing),
never a huge number. Dividing by ``|b|`` keeps the sign of the change for negative baselines.

Example:
    >>> import pandas as pd
    >>> b, f = pd.Series([10.0, 0.0, -4.0]), pd.Series([12.0, 3.0, -2.0])
    >>> relative_change(b, f, rel_floor=0.01).tolist()
    [0.2, nan, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from deltarad.features.naming import parse


def relative_change(
    baseline: pd.Series, followup: pd.Series, rel_floor: float = 0.01, abs_floor: float = 1e-9
) -> pd.Series:
    """(f - b) / |b|, NA where |b| is near zero relative to the cohort (module docstring)."""
    b = pd.to_numeric(baseline, errors="coerce").astype(float)
    f = pd.to_numeric(followup, errors="coerce").astype(float)
    median = float(np.nanmedian(np.abs(b))) if b.notna().any() else 0.0
    floor = max(abs_floor, rel_floor * median)
    near_zero = b.abs() <= floor
    out = (f - b) / b.abs()
    return out.mask(near_zero | b.isna() | f.isna())


def delta_names(timepoint: str, reference: str = "baseline") -> tuple[str, str]:
    """Timepoint parts of the columns holding the change from `reference` to `timepoint`:
    ``delta`` / ``reldelta`` for followup against baseline (the output contract's names),
    ``delta-{timepoint}`` / ``reldelta-{timepoint}`` for another later timepoint against the
    baseline, and ``…-{timepoint}-from-{reference}`` against another timepoint.

    Example:
        >>> delta_names("followup"), delta_names("mid")
        (('delta', 'reldelta'), ('delta-mid', 'reldelta-mid'))
        >>> delta_names("followup", "mid")
        ('delta-followup-from-mid', 'reldelta-followup-from-mid')
    """
    if reference == "baseline":
        suffix = "" if timepoint == "followup" else f"-{timepoint}"
    else:
        suffix = f"-{timepoint}-from-{reference}"
    return f"delta{suffix}", f"reldelta{suffix}"


def is_change(timepoint: str) -> bool:
    """Whether a column's timepoint part names a change (delta, reldelta and their variants)."""
    return timepoint.split("-")[0] in ("delta", "reldelta")


def add_deltas(
    table: pd.DataFrame,
    timepoints: Sequence[str] | None = None,
    previous: bool = False,
    rel_floor: float = 0.01,
    abs_floor: float = 1e-9,
    skip_sources: tuple[str, ...] = ("qc",),
    baseline: str = "baseline",
) -> pd.DataFrame:
    """Append the change of every feature present at both ends: each later timepoint against
    the baseline (:func:`delta_names`) and, with `previous`, against the timepoint before it.

    `timepoints`: the scan timepoints in time order (default: ``baseline, followup``).
    """
    timepoints = list(timepoints or [baseline, "followup"])
    later = [tp for tp in timepoints if tp != baseline]
    pairs = [(baseline, tp) for tp in later]
    if previous:
        pairs += list(zip(later, later[1:], strict=False))
    columns = set(table.columns)
    deltas: dict[str, pd.Series] = {}
    relative: dict[str, pd.Series] = {}
    for reference, tp in pairs:
        name, relname = delta_names(tp, reference)
        for col in table.columns:
            parts = parse(col)
            if parts is None or parts.timepoint != reference or parts.source in skip_sources:
                continue
            other = parts.at(tp)
            if other not in columns:
                continue
            b = pd.to_numeric(table[col], errors="coerce").astype(float)
            f = pd.to_numeric(table[other], errors="coerce").astype(float)
            deltas[parts.at(name)] = f - b
            relative[parts.at(relname)] = relative_change(b, f, rel_floor, abs_floor)
    if not deltas:
        return table
    return pd.concat([table, pd.DataFrame({**deltas, **relative}, index=table.index)], axis=1)
