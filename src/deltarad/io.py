"""Image and table I/O: the only module that reads or writes images.

Every writer goes through :func:`atomic_path`, so a killed job never leaves a file that looks
complete: data are written to a temporary name in the same folder and renamed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from deltarad.runlog import UserError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class ImageReadError(UserError):
    """An image file is missing, unreadable or not an image."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image: what must agree between an image and its mask."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def describe(self) -> str:
        """Short human-readable form for error messages."""

        def fmt(values: tuple[float, ...]) -> str:
            return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

        return (
            f"size {self.size}, spacing {fmt(self.spacing)}, origin {fmt(self.origin)}, "
            f"direction {fmt(self.direction)}"
        )

    def mismatches(
        self,
        other: Geometry,
        spacing_rel: float = 1e-4,
        origin_mm: float = 1e-3,
        direction: float = 1e-4,
    ) -> list[str]:
        """Names of the header fields on which two grids disagree beyond tolerance."""
        out = []
        if self.size != other.size:
            out.append("size")
        a, b = np.asarray(self.spacing), np.asarray(other.spacing)
        if a.shape != b.shape or np.any(np.abs(a - b) > spacing_rel * np.maximum(a, b)):
            out.append("spacing")
        a, b = np.asarray(self.origin), np.asarray(other.origin)
        if a.shape != b.shape or np.any(np.abs(a - b) > origin_mm):
            out.append("origin")
        a, b = np.asarray(self.direction), np.asarray(other.direction)
        if a.shape != b.shape or np.any(np.abs(a - b) > direction):
            out.append("direction")
        return out


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_header(path: str | Path) -> tuple[Geometry, str, int]:
    """Geometry, pixel type and component count of an image file, without reading voxels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"file not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"not a readable image: {path} ({_first_line(err)})") from None
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return Geometry.of(reader), pixel, int(reader.GetNumberOfComponents())


def read_image(path: str | Path) -> sitk.Image:
    """Read an image, turning ITK's multi-line exceptions into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"file not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImageReadError(f"not a readable image: {path} ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # ITK puts the useful description last ("Description: ...").
    for line in reversed(lines):
        if line.lower().startswith("description"):
            return line
    return lines[-1] if lines else type(err).__name__


def count_nonfinite(path: str | Path) -> int:
    """Number of NaN or infinite voxels in a floating-point image file.

    ITK's NIfTI reader silently turns NaN into 0, so NIfTI files are read with nibabel here:
    the check must see what is in the file, not what SimpleITK makes of it.
    """
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        data = np.asanyarray(nibabel.load(str(path)).dataobj)
    else:
        data = sitk.GetArrayFromImage(read_image(path))
    if not np.issubdtype(data.dtype, np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(data)))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix (.nii.gz) so writers pick the right format from the name.
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image atomically (format from the file name)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a TSV (NA as `NA`) or Parquet table atomically, chosen by suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t", index=False, na_rep="NA", lineterminator="\n")
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically with sorted keys, so equal content gives equal bytes."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a sample sheet: every column as text, `NA`/empty as missing, no type guessing."""
    return pd.read_csv(
        path, sep="\t", dtype=str, keep_default_na=False, na_values=["", "NA"], comment=None
    )


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
