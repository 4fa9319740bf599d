"""Image I/O helpers: atomic writes, headers, geometry comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from deltarad import io


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "sub" / "x.tsv"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_and_keeps_format(tmp_path):
    image = sitk.GetImageFromArray(np.arange(27, dtype=np.int16).reshape(3, 3, 3))
    path = io.write_image(image, tmp_path / "x.nii.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip: the suffix chose the format
    geo, pixel, comps = io.read_header(path)
    assert geo.size == (3, 3, 3) and "16-bit signed" in pixel and comps == 1
    io.write_table(pd.DataFrame({"a": [1, None]}), tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text() == "a\n1.0\nNA\n"


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(io.ImageReadError, match="file not found"):
        io.read_image(tmp_path / "none.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("garbage")
    with pytest.raises(io.ImageReadError, match="bad.nii.gz"):
        io.read_header(bad)


def test_geometry_mismatch_fields():
    a = io.Geometry((4, 4, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    b = io.Geometry((4, 4, 5), (1.0, 1.0, 2.001), (0.0, 0.0, 0.01), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert a.mismatches(a) == []
    assert a.mismatches(b) == ["size", "spacing", "origin"]
    assert a.mismatches(b, spacing_rel=1e-3, origin_mm=0.1) == ["size"]
    assert "spacing (1, 1, 2)" in a.describe()
