"""Feature sets: which columns of features.parquet and the clinical sheet a model sees.

A set selects imaging columns ``{timepoint}__{channel}__{region}__{source}__{feature}`` by
shell-style patterns per name part (``ring*``, ``PET``, ``*``; channels default to all, so a set
is per channel or combined) and clinical covariates by name; a set with both is a combined
clinical + imaging model. QC flag columns (source ``qc``) are never features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import pandas as pd

from deltarad.features.naming import parse
from deltarad.model.harmonize import BATCH_COLUMN, COVARIATE_PREFIX
from deltarad.runlog import UserError

log = logging.getLogger(__name__)


class EmptyFeatureSet(UserError):
    """A feature set selects no column; the set is skipped with this message."""


@dataclass(frozen=True)
class FeatureSet:
    name: str
    clinical: tuple[str, ...] = ()
    timepoints: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("*",)
    regions: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    features: tuple[str, ...] = ("*",)

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> FeatureSet:
        def tup(key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
            return tuple(str(v) for v in block.get(key, default))

        return cls(
            name=str(block["name"]),
            clinical=tup("clinical"),
            timepoints=tup("timepoints"),
            channels=tup("channels", ["*"]),
            regions=tup("regions", ["*"] if block.get("timepoints") else []),
            sources=tup("sources", ["*"] if block.get("timepoints") else []),
            features=tup("features", ["*"]),
        )

    @property
    def uses_imaging(self) -> bool:
        return bool(self.timepoints)

    def imaging_columns(self, columns: Iterable[str]) -> list[str]:
        """Feature columns whose name parts match this set's patterns, in table order."""
        if not self.uses_imaging:
            return []
        out = []
        for col in columns:
            parts = parse(col)
            if parts is None or parts.is_qc:
                continue
            tp, channel, region, source, feat = parts
            if (
                any(fnmatchcase(tp, p) for p in self.timepoints)
                and any(fnmatchcase(channel, p) for p in self.channels)
                and any(fnmatchcase(region, p) for p in self.regions)
                and any(fnmatchcase(source, p) for p in self.sources)
                and any(fnmatchcase(feat, p) for p in self.features)
            ):
                out.append(col)
        return out


OUTCOME_COLUMNS = ("response", "time", "event")


def encode_clinical(
    clinical: pd.DataFrame, names: Iterable[str], key: str = "models.feature_sets"
) -> pd.DataFrame:
    """Covariates as numbers: numeric columns as they are, text columns one-hot (first level
    dropped, levels sorted). Indexed by patient_id. Encoding learns nothing from outcomes.
    ``key`` names the config key the names came from, for the error message."""
    frame = clinical.set_index("patient_id")
    out = {}
    for name in names:
        if name not in frame.columns:
            raise UserError(
                f"config key '{key}': clinical covariate '{name}' is not a column "
                f"of the clinical sheet (columns: {sorted(frame.columns)})"
            )
        values = pd.to_numeric(frame[name], errors="coerce")
        text = frame[name].dropna()
        if values.notna().sum() == text.size:
            out[name] = values.astype(float)
            continue
        levels = sorted(text.astype(str).unique())
        for level in levels[1:]:
            col = frame[name].astype(str).eq(level).astype(float)
            out[f"{name}_{level}"] = col.where(frame[name].notna(), np.nan)
    return pd.DataFrame(out, index=frame.index)


def protected_covariates(clinical: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """The biological covariates ComBat protects (``models.harmonize.protect``), encoded like
    clinical features and named ``__protect__<column>`` so that ComBat uses and drops them.
    An outcome column is refused: protecting it would put the outcome into harmonisation."""
    names = list(names)
    outcome = [n for n in names if n in OUTCOME_COLUMNS]
    if outcome:
        raise UserError(
            f"config key 'models.harmonize.protect': {outcome} is an outcome; ComBat may "
            "protect only covariates known before treatment (e.g. age, sex, stage)"
        )
    encoded = encode_clinical(clinical, names, key="models.harmonize.protect")
    return encoded.add_prefix(COVARIATE_PREFIX)


def design(
    fs: FeatureSet,
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    centers: pd.Series,
    protect: Iterable[str] = (),
) -> pd.DataFrame:
    """The model input of a feature set: one row per patient (index patient_id), the selected
    columns plus the centre column ComBat needs and, when ``protect`` names clinical columns,
    ComBat's protected covariates (only for sets with imaging columns: nothing to harmonise
    otherwise). Raises :class:`EmptyFeatureSet` with the reason when nothing is selected."""
    table = features.set_index("patient_id") if "patient_id" in features.columns else features
    cols = fs.imaging_columns(table.columns)
    if fs.uses_imaging and not cols:
        parsed = [p for p in map(parse, table.columns) if p is not None and not p.is_qc]
        sources = sorted({p.source for p in parsed})
        channels = sorted({p.channel for p in parsed})
        raise EmptyFeatureSet(
            f"feature set '{fs.name}': no column of features.parquet matches timepoints "
            f"{list(fs.timepoints)}, channels {list(fs.channels)}, regions {list(fs.regions)}, "
            f"sources {list(fs.sources)}, features {list(fs.features)} (sources present: "
            f"{sources}, channels present: {channels}); skipped"
        )
    parts = [table[cols].astype(float)] if cols else []
    if fs.clinical:
        parts.append(encode_clinical(clinical, fs.clinical))
    if not parts:
        raise EmptyFeatureSet(f"feature set '{fs.name}': selects neither imaging nor clinical")
    protect = list(protect)
    if cols and protect:
        parts.append(protected_covariates(clinical, protect))
    X = pd.concat(parts, axis=1, join="inner") if len(parts) > 1 else parts[0]
    X = X.loc[X.index.intersection(centers.index)]
    X[BATCH_COLUMN] = centers.loc[X.index].astype(str).to_numpy()
    return X
