"""Pseudonymisation: keyed patient pseudonyms and a scrubber for every message we emit.

A keyed hash (HMAC-SHA256) rather than a plain hash, because a plain hash of a hospital's
patient number can be reversed by hashing all plausible numbers. The key is read from an
environment variable or a key file, never from the command line (it would land in the shell
history and the process list), and it is never written anywhere.

The scrubber is the second line of defence: error messages name files, and folder names in
real exports often carry patient names or hospital numbers, so every text we write passes
through :meth:`Scrubber.scrub`, which replaces every identifying value seen in any header.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deltarad.runlog import UserError

if TYPE_CHECKING:  # pydicom is imported where headers are read, not when the CLI starts
    from pydicom.dataset import Dataset

DEFAULT_KEY_ENV = "DELTARAD_PSEUDONYM_KEY"
MIN_KEY_LENGTH = 16
# Header fields whose values identify a person, a place or a visit. Their values are collected
# from every file read and removed from every message we write.
PHI_TAGS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "AccessionNumber",
    "StationName",
    "StudyID",
    "StudyDescription",
    "SeriesDescription",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)
# Free-text fields among them: identifying through what a site may have typed into them (a name,
# a date). Channel names are derived from descriptions with those values cut out
# (:meth:`Scrubber.cutter`), not from nothing.
FREE_TEXT_TAGS = ("StudyDescription", "SeriesDescription")
REDACTED = "[redacted]"


class PseudonymKeyError(UserError):
    """No usable pseudonymisation key."""


def load_key(env_var: str = DEFAULT_KEY_ENV, key_file: Path | None = None) -> bytes:
    """The secret key, from a key file if given, else from the environment variable."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as err:
            raise PseudonymKeyError(f"cannot read the key file {key_file}: {err}") from None
        origin = f"key file {key_file}"
    else:
        key = os.environ.get(env_var, "").strip()
        origin = f"environment variable {env_var}"
    if not key:
        raise PseudonymKeyError(
            f"no pseudonymisation key: set {origin} (a secret of at least {MIN_KEY_LENGTH} "
            "characters; keep it to map pseudonyms of later deliveries consistently)"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise PseudonymKeyError(
            f"pseudonymisation key from {origin} is too short: {len(key)} characters, "
            f"need at least {MIN_KEY_LENGTH}"
        )
    return key.encode()


def pseudonym(patient_id: str, key: bytes, prefix: str = "P", length: int = 12) -> str:
    """Stable pseudonym of a patient ID: same key and ID give the same pseudonym.

    >>> pseudonym("12345", b"0123456789abcdef")[:1]
    'P'
    """
    digest = hmac.new(key, patient_id.strip().encode(), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:length]}"


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for item in items:
        text = str(item).strip()
        if text:
            out.append(text)
            if keyword.endswith("Name"):
                # Person names: also each component (family, given, ...) on its own.
                out += [p.strip() for p in re.split(r"[\^=,]", text) if p.strip()]
            if keyword.endswith("Date") and re.fullmatch(r"\d{8}", text):
                out.append(f"{text[:4]}-{text[4:6]}-{text[6:]}")
    return out


@dataclass
class Scrubber:
    """Collects identifying values from headers and removes them from text."""

    min_length: int = 3
    values: dict[str, str] = field(default_factory=dict)
    free_text: set[str] = field(default_factory=set)  # whole values of FREE_TEXT_TAGS

    def add(self, value: str, replacement: str = REDACTED) -> None:
        """Register one identifying value; later, longer or explicit replacements win."""
        value = value.strip()
        keep = value in self.values and replacement == REDACTED
        if len(value) >= self.min_length and not keep:
            self.values[value] = replacement

    def collect(self, ds: Dataset) -> None:
        """Register every identifying value of one header."""
        for keyword in PHI_TAGS:
            for value in _values(ds, keyword):
                self.add(value)
                if keyword in FREE_TEXT_TAGS:
                    self.free_text.add(value)

    def scrub(self, text: str) -> str:
        """`text` with every registered value replaced (longest first, case-insensitive)."""
        if not self.values:
            return text
        ordered = sorted(self.values, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)
        lookup = {v.lower(): r for v, r in self.values.items()}
        return pattern.sub(lambda m: lookup.get(m.group(0).lower(), REDACTED), text)

    def cutter(self) -> Callable[[str], str]:
        """A function cutting every value registered now out of a text (each replaced by a
        space), except whole free texts: it cleans a description of the names, dates and IDs
        inside it, where :meth:`scrub` would redact the whole description."""
        ordered = sorted((v for v in self.values if v not in self.free_text), key=len, reverse=True)
        if not ordered:
            return lambda text: text
        pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)
        return lambda text: pattern.sub(" ", text)
