"""The one naming function of feature-table columns (docs/output.md).

A column is ``{timepoint}__{channel}__{region}__{source}__{feature}``: the timepoint (or a
change: ``delta``, ``reldelta-mid``, ...), the image channel the values were measured on (``CT``,
``PET``, ``T2``; a network's deep features name every channel it reads, joined by ``+``), the
region (``tumor``, ``ring0-3mm``), the source (``pyrad`` for pyradiomics, ``deep``, ``qc``
for flags) and the feature. Parts never contain ``__``: validation rejects timepoint and channel
names with it, and pyradiomics' and the network's feature names have none.

Example:
    >>> column("followup", "PET", "tumor", "pyrad", "original_firstorder_Mean")
    'followup__PET__tumor__pyrad__original_firstorder_Mean'
    >>> parse("delta__CT__ring0-3mm__deep__l2_f001_mean").region
    'ring0-3mm'
    >>> parse("patient_id") is None
    True
"""

from __future__ import annotations

from typing import NamedTuple

SEP = "__"
# Source part of QC flag columns (never model features).
QC = "qc"


class Column(NamedTuple):
    timepoint: str
    channel: str
    region: str
    source: str
    feature: str

    @property
    def is_qc(self) -> bool:
        return self.source == QC

    def at(self, timepoint: str) -> str:
        """The same measurement at another timepoint (or change)."""
        return column(timepoint, *self[1:])


def column(timepoint: str, channel: str, region: str, source: str, feature: str) -> str:
    """The column name of one value (module docstring)."""
    return SEP.join([timepoint, channel, region, source, feature])


def parse(name: str) -> Column | None:
    """The parts of a feature-table column; None for a column that is not one
    (``patient_id``)."""
    parts = name.split(SEP)
    return Column(*parts) if len(parts) == 5 else None


def deep_channel(channels: list[str] | tuple[str, ...]) -> str:
    """The channel part of a network's deep features: the channels it reads, joined by ``+``."""
    return "+".join(channels)
