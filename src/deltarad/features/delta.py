"""Change between timepoints: absolute (followup - baseline) and relative, safely.

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

import numpy as np
import pandas as pd

SEP = "__"


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


def add_deltas(
    table: pd.DataFrame,
    baseline: str = "baseline",
    followup: str = "followup",
    rel_floor: float = 0.01,
    abs_floor: float = 1e-9,
    skip_sources: tuple[str, ...] = ("qc",),
) -> pd.DataFrame:
    """Append ``delta__…`` and ``reldelta__…`` for every feature present at both timepoints."""
    new: dict[str, pd.Series] = {}
    for col in table.columns:
        parts = col.split(SEP)
        if len(parts) != 4 or parts[0] != baseline or parts[2] in skip_sources:
            continue
        other = SEP.join([followup, *parts[1:]])
        if other not in table.columns:
            continue
        b = pd.to_numeric(table[col], errors="coerce").astype(float)
        f = pd.to_numeric(table[other], errors="coerce").astype(float)
        rest = SEP.join(parts[1:])
        new[f"delta{SEP}{rest}"] = f - b
        new[f"reldelta{SEP}{rest}"] = relative_change(b, f, rel_floor, abs_floor)
    if not new:
        return table
    deltas = pd.DataFrame(new, index=table.index)
    order = [c for c in deltas.columns if c.startswith("delta")]
    order += [c for c in deltas.columns if c.startswith("reldelta")]
    return pd.concat([table, deltas[order]], axis=1)
