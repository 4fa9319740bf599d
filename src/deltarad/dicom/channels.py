"""Channel names of image series: which image of a timepoint a scan is (CT, PET, T2, ADC).

The samples sheet's `channel` tells the scans of one timepoint apart; the modality (CT, MR, PET)
only chooses the normalisation. A series is named after its modality, unless the run has several
series of that modality at one timepoint (a rectal MR study with T2 and ADC): then every series of
that modality, in every patient and at every timepoint, is named from its headers, so that the
same kind of series has the same name throughout the cohort.

A name from the headers is a well-known kind of series (:data:`KNOWN`, e.g. "ep2d_diff_ADC" ->
ADC), else the description reduced to letters and digits ("Venous phase" -> VENOUSPHASE). The
texts are free text a site may have typed a name or a date into: the caller cuts every
identifying value out first, and the reduction drops numbers and caps the length, so only a short
token reaches the sheet.

Example:
    >>> derive_channel(["t2_tse_tra_320"], "MR"), derive_channel(["Apparent Diffusion"], "MR")
    ('T2', 'ADC')
    >>> derive_channel(["Arterial phase 1.5 mm"], "CT")
    'ARTERIALPHASEMM'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydicom is imported where headers are read, not when the CLI starts
    from pydicom.dataset import Dataset

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9]+")
# Header texts a channel is derived from, the first that gives a name winning.
TEXT_TAGS = ("SeriesDescription", "SequenceName", "ProtocolName")
MAX_LENGTH = 16
# Start of a word: not after a letter or digit ("t2_tse" and "ax T2" are T2; "ep2d" is not).
_W = r"(?<![a-z0-9])"
# (channel, pattern on the lower-cased text) in the order tried: ADC before DWI (an ADC map is
# often described as diffusion), FLAIR and T2* before T2. T1 is T1C after contrast.
KNOWN = (
    ("ADC", re.compile(rf"{_W}adc|apparent\s*diffusion")),
    ("DWI", re.compile(rf"dwi|diff|trace|{_W}b\s*=?\s*\d{{1,4}}(?![0-9])")),
    ("FLAIR", re.compile(r"flair")),
    ("T2STAR", re.compile(r"t2\s*(\*|star)")),
    ("T1", re.compile(rf"{_W}t1")),
    ("T2", re.compile(rf"{_W}t2")),
)
_CONTRAST = re.compile(
    rf"{_W}(t1c|t1ce|t1gd|post|gd|gad|gado|ce|km)(?![a-z])|contrast|\+\s*c(?![a-z])|{_W}c\s*\+"
)
# "pre contrast" and "native" name the T1 before contrast, whatever else the text says.
_BEFORE_CONTRAST = re.compile(rf"{_W}(pre|native?)(?![a-z])")


def known_channel(text: str) -> str | None:
    """The channel of a well-known kind of series named in `text`, else None."""
    lower = text.lower()
    for name, pattern in KNOWN:
        if pattern.search(lower):
            after_contrast = _CONTRAST.search(lower) and not _BEFORE_CONTRAST.search(lower)
            return "T1C" if name == "T1" and after_contrast else name
    return None


def reduced(text: str) -> str:
    """`text` as a channel token: its words of letters and digits, without numbers (dates,
    series numbers, IDs: any word with four digits in a row), joined, upper case, at most
    :data:`MAX_LENGTH` characters; empty when nothing is left."""
    words = [
        w for w in CHANNEL_PATTERN.findall(text) if not w.isdigit() and not re.search(r"\d{4}", w)
    ]
    return "".join(words).upper()[:MAX_LENGTH]


def derive_channel(texts: Iterable[str], modality: str) -> str:
    """Channel of a series of sheet modality `modality` described by `texts` (already cleaned of
    identifying values; in order of preference): PET for PET, else the first well-known kind
    any text names, else the first text reduced to a token, else the modality."""
    if modality == "PET":
        return "PET"
    texts = [t for t in texts if t.strip()]
    for text in texts:
        name = known_channel(text)
        if name:
            return name
    return next((token for token in map(reduced, texts) if token), modality)


def header_texts(header: Dataset) -> list[str]:
    """The texts of :data:`TEXT_TAGS` in a series' header (empty strings where absent)."""
    return [str(header.get(tag, "") or "") for tag in TEXT_TAGS]
