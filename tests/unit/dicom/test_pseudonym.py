"""Keyed pseudonyms, key handling, and the scrubber that cleans every emitted message."""

from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset

from deltarad.dicom.pseudonym import (
    PseudonymKeyError,
    Scrubber,
    load_key,
    pseudonym,
)

KEY = b"0123456789abcdef-key"


def test_pseudonym_is_keyed_stable_and_valid():
    a = pseudonym("MRN0400001", KEY)
    assert a == pseudonym(" MRN0400001 ", KEY)  # surrounding blanks do not matter
    assert a != pseudonym("MRN0400002", KEY)
    assert a != pseudonym("MRN0400001", b"another-key-0123456")
    assert re.fullmatch(r"P[0-9a-f]{12}", a)
    assert pseudonym("MRN0400001", KEY, prefix="AMS-").startswith("AMS-")


def test_key_from_environment_or_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_KEY", "  a-long-enough-secret  ")
    assert load_key("MY_KEY") == b"a-long-enough-secret"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(PseudonymKeyError, match="MY_KEY"):
        load_key("MY_KEY")
    monkeypatch.setenv("MY_KEY", "short")
    with pytest.raises(PseudonymKeyError, match="too short"):
        load_key("MY_KEY")
    key_file = tmp_path / "key.txt"
    key_file.write_text("file-secret-0123456789\n")
    assert load_key("MY_KEY", key_file) == b"file-secret-0123456789"
    with pytest.raises(PseudonymKeyError, match="cannot read"):
        load_key("MY_KEY", tmp_path / "missing.txt")


def test_scrubber_removes_every_identifying_value():
    ds = Dataset()
    ds.PatientName = "MUSTERMANN^ERIKA"
    ds.PatientID = "MRN0400001"
    ds.PatientBirthDate = "19500112"
    ds.InstitutionName = "Sint Fictus Ziekenhuis"
    ds.StudyDate = "20210304"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    scrubber = Scrubber()
    scrubber.collect(ds)
    scrubber.add("MRN0400001", "P0123")
    text = (
        "file MRN0400001_Mustermann/20210304/CT/IMG1.dcm of erika, born 1950-01-12 at "
        "SINT FICTUS ZIEKENHUIS, study 1.2.826.0.1.3680043.8.498.1"
    )
    clean = scrubber.scrub(text)
    assert clean.startswith("file P0123_[redacted]/[redacted]/CT/IMG1.dcm")
    for value in ("MRN0400001", "mustermann", "erika", "1950", "20210304", "Fictus", "3680043"):
        assert value.lower() not in clean.lower()
    assert Scrubber().scrub(text) == text  # nothing registered: nothing changed
