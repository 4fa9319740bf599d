"""Search files for identifying values, through the encodings outputs hide text in.

Used by test_phi.py. The identifying values come from the DICOM headers themselves (every name,
date, identifying string and instance UID), not from the code under test, so a tag the
pseudonymiser forgets is still searched for.

Every file is searched as raw bytes and through each decoding that applies, recursively:
gzip/zlib, zip members, NIfTI header fields and extensions, parquet (column names, metadata,
string and integer columns), PNG text chunks, PDF streams, base64 runs in text (the report's
data URIs, Snakemake's metadata file names), and HTML/URL escapes.

Text layers are searched case-insensitively for every value. Binary layers (image voxels,
pickles, compressed fragments) are searched through their printable runs, case-sensitively in
the usual spellings (as written, upper, lower, title case) and only for values of at least
`BINARY_MIN` characters: a 4-letter value turns up by chance in megabytes of random bytes.
A hit must stand alone: no ASCII letter or digit right before or after it (so the given name
INES does not match "lines", nor a date the digits of a longer number).
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import re
import struct
import urllib.parse
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pydicom

BINARY_MIN = 5
MIN_LENGTH = 4
MAX_DEPTH = 4
# String elements whose values identify a person, a place or a visit (besides PN, DA, DT, UI).
IDENTIFYING_KEYWORDS = {
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "AdditionalPatientHistory",
}
# Not searched: the export's StudyID is the last 4 digits of the accession number (searched in
# full); 4 bare digits would match numbers in tables by chance.
SKIPPED_KEYWORDS = {"StudyID"}
# UIDs under the DICOM root name classes and coding schemes, not studies, series or objects.
STANDARD_UID_ROOT = "1.2.840.10008."
UID_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+){3,}")
# At least 12 characters (9 bytes), whole 4-character groups, optional padding.
BASE64_RUN = re.compile(r"(?:[A-Za-z0-9+/]{4}){3,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{4,}")
PDF_TEXT_OBJECT = re.compile(rb"\bBT\b(.*?)\bET\b", re.DOTALL)
PDF_SHOW = re.compile(rb"(\[.*?\]\s*TJ|\((?:\\.|[^\\)])*\)\s*Tj)", re.DOTALL)
PDF_STRING = re.compile(rb"\(((?:\\.|[^\\)])*)\)")
PDF_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.DOTALL)
# (name, escape sequence, unescape) of the text escapes an identifier could hide behind.
ESCAPES = (
    ("html", re.compile(r"&(?:#[0-9]+|#x[0-9a-fA-F]+|[A-Za-z]+);"), html.unescape),
    ("url", re.compile(r"%[0-9A-Fa-f]{2}"), urllib.parse.unquote),
)
ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass
class Needles:
    """Identifying values by category; UIDs are matched as whole tokens."""

    words: dict[str, str] = field(default_factory=dict)  # value -> category
    uids: set[str] = field(default_factory=set)

    def add(self, value: str, category: str) -> None:
        value = value.strip()
        if len(value) >= MIN_LENGTH and not value.isspace():
            self.words.setdefault(value, category)

    def categories(self) -> Counter:
        counts = Counter(self.words.values())
        counts["uid"] = len(self.uids)
        return counts

    def __len__(self) -> int:
        return len(self.words) + len(self.uids)


def _date_forms(da: str) -> list[str]:
    if not re.fullmatch(r"\d{8}", da):
        return [da]
    y, m, d = da[:4], da[4:6], da[6:]
    return [da, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{d}-{m}-{y}"]


def dicom_needles(root: Path) -> Needles:
    """Every identifying value in the headers of the DICOM files under `root`."""
    needles = Needles()
    n_files = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, force=True)
        n_files += 1
        for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
            if elem.keyword in SKIPPED_KEYWORDS or elem.value in (None, ""):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in map(str, values):
                if elem.VR == "PN":
                    parts = [p for p in re.split(r"[\^=]", value) if p.strip()]
                    needles.add(value, "name")
                    for part in parts:
                        needles.add(part, "name")
                    if len(parts) >= 2:
                        needles.add(" ".join(parts[:2]), "name")
                        needles.add(" ".join(parts[1::-1]), "name")
                        needles.add(", ".join(parts[:2]), "name")
                elif elem.VR in ("DA", "DT"):
                    category = "birth_date" if "Birth" in elem.keyword else "date"
                    for form in _date_forms(value[:8]):
                        needles.add(form, category)
                elif elem.VR == "UI":
                    standard = value.startswith(STANDARD_UID_ROOT)
                    if not (standard or elem.keyword.endswith("ClassUID")):
                        needles.uids.add(value)
                elif elem.keyword in IDENTIFYING_KEYWORDS:
                    category = {
                        "PatientID": "patient_id",
                        "InstitutionName": "institution",
                        "AccessionNumber": "accession",
                    }.get(elem.keyword, "text")
                    needles.add(value, category)
                    if elem.keyword.startswith("Institution"):
                        for word in value.split():
                            if len(word) >= BINARY_MIN:
                                needles.add(word, category)
    if n_files == 0:
        raise AssertionError(f"no DICOM file under {root}")
    return needles


@dataclass(frozen=True)
class Layer:
    where: str  # file, then each decoding step: "a/b.nii.gz!gzip!nifti-header"
    kind: str  # the last decoding step ("raw" for the file's bytes)
    data: bytes
    text: bool


def _is_text(data: bytes) -> bool:
    head = data[:65536]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a character cut at the boundary
    return True


def _nifti_header(data: bytes) -> bytes | None:
    if len(data) < 352 or data[344:348] not in (b"n+1\x00", b"ni1\x00"):
        return None
    if struct.unpack("<i", data[:4])[0] == 348:
        vox_offset = struct.unpack("<f", data[108:112])[0]
    elif struct.unpack(">i", data[:4])[0] == 348:
        vox_offset = struct.unpack(">f", data[108:112])[0]
    else:
        return None
    return data[: max(352, int(vox_offset))]


def _parquet_text(data: bytes) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    parts = list(table.column_names)
    for key, value in (table.schema.metadata or {}).items():
        parts += [key.decode("utf-8", "replace"), value.decode("utf-8", "replace")]
    for column in table.columns:
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind):
            parts += [str(v) for v in column.to_pylist() if v is not None]
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            parts += [v.decode("latin-1") for v in column.to_pylist() if v is not None]
    return "\n".join(parts).encode("utf-8")


def _png_text(data: bytes) -> bytes:
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            out.append(body.replace(b"\x00", b"\n"))
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            out += [key, zlib.decompress(rest[1:])]
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _tkey, _, text = rest.partition(b"\x00")
            out += [key, zlib.decompress(text) if compressed else text]
        pos += 12 + length
    return b"\n".join(out)


def _inflate(body: bytes) -> bytes:
    """A PDF stream: deflated (what matplotlib writes), else searched as it is."""
    try:
        return zlib.decompressobj().decompress(body)
    except zlib.error:
        return body


def _windows(text: str, escape: re.Pattern, margin: int = 96) -> str:
    """The stretches of `text` around each escape sequence, one per line (searching only
    these keeps a 5 MB report from being searched three times over)."""
    spans: list[list[int]] = []
    for match in escape.finditer(text):
        start, end = max(0, match.start() - margin), match.end() + margin
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return "\n".join(text[a:b] for a, b in spans)


def _looks_like_base64(run: str) -> bool:
    """Encoded bytes mix upper case, lower case and digits; words and hex digests do not."""
    return (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() or c in "+/" for c in run)
    )


def _base64_name(name: str) -> str | None:
    """A file name that is URL-safe base64 of UTF-8 text, decoded; else None."""
    if len(name) < 8 or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", name):
        return None
    try:
        text = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if text.isprintable() else None


def _pdf_text(content: bytes) -> bytes:
    """The strings a PDF content stream shows, one text object per line: kerning splits a
    word into pieces (`[(J) 16.8 (A) ...] TJ`), so the pieces are joined."""
    lines = []
    for block in PDF_TEXT_OBJECT.findall(content):
        shown = [
            re.sub(rb"\\([()\\])", rb"\1", s)
            for arg in PDF_SHOW.findall(block)
            for s in PDF_STRING.findall(arg)
        ]
        lines.append(b"".join(shown))
    return b"\n".join(lines)


def _raise(err: Exception) -> bytes:
    raise err


def _decodings(data: bytes, text: bool, kind: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(step name, decoder) of every decoding that applies to `data`."""
    if data[:2] == b"\x1f\x8b":
        yield "gzip", lambda: gzip.decompress(data)
    if data[:1] == b"\x78" and data[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        yield "zlib?", lambda: zlib.decompress(data)  # weak magic: failure is not an error
    if data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as err:
            yield "zip", partial(_raise, err)
        else:
            yield "zip-names", lambda: "\n".join(archive.namelist()).encode()
            for name in archive.namelist():
                yield f"zip:{name}", partial(archive.read, name)
    if _nifti_header(data) is not None:
        yield "nifti-header", lambda: b"\n".join(PRINTABLE_RUN.findall(_nifti_header(data)))
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        yield "parquet", lambda: _parquet_text(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        yield "png-text", lambda: _png_text(data)
    if data[:5] == b"%PDF-":
        for i, match in enumerate(PDF_STREAM.finditer(data)):
            yield f"pdf-stream[{i}]", partial(_inflate, match.group(1))
    if kind == "pdf-stream" and b"BT" in data:
        yield "pdf-text", partial(_pdf_text, data)
    if text:
        decoded = data.decode("utf-8", "replace")
        for name, escape, unescape in ESCAPES:
            windows = _windows(decoded, escape)
            if windows:
                yield f"{name}-unescaped", lambda w=windows, f=unescape: f(w).encode("utf-8")
        for i, match in enumerate(BASE64_RUN.finditer(decoded)):
            run = match.group(0)
            if _looks_like_base64(run):
                # Failure is not an error: a long identifier can look like base64.
                yield f"base64?[{i}]", partial(base64.b64decode, run)


@dataclass(frozen=True)
class Failure:
    where: str
    error: str


def layers(
    where: str, data: bytes, kind: str = "raw", depth: int = 0, failures: list | None = None
) -> Iterator[Layer]:
    """The bytes themselves, then every decoding, recursively. A decoding that should work
    but fails is appended to `failures` (a corrupt output would otherwise go unsearched)."""
    text = _is_text(data)
    yield Layer(where, kind, data, text)
    if depth >= MAX_DEPTH or kind.endswith("-unescaped"):
        return
    for step, decode in _decodings(data, text, kind):
        try:
            decoded = decode()
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            if "?" not in step and "?" not in where and failures is not None:
                failures.append(Failure(f"{where}!{step}", f"{type(err).__name__}: {err}"))
            continue
        name = step.split("[")[0].rstrip("?")
        yield from layers(f"{where}!{step}", decoded, name, depth + 1, failures)


def _boundary_hit(haystack: str, needle: str) -> bool:
    """Whether `needle` occurs with no ASCII letter or digit glued to either end."""
    start = haystack.find(needle)
    while start >= 0:
        end = start + len(needle)
        glued_before = needle[0] in ALNUM and start > 0 and haystack[start - 1] in ALNUM
        glued_after = needle[-1] in ALNUM and end < len(haystack) and haystack[end] in ALNUM
        if not (glued_before or glued_after):
            return True
        start = haystack.find(needle, start + 1)
    return False


def _spellings(value: str) -> set[str]:
    return {value, value.upper(), value.lower(), value.title()}


def search_layer(layer: Layer, needles: Needles) -> list[tuple[str, str]]:
    """(category, value) of every identifying value found in one layer."""
    if layer.text:
        haystack = layer.data.decode("utf-8", "replace")
        lowered = haystack.lower()
        candidates = {v: {v.lower()} for v in needles.words}
    else:
        haystack = "\n".join(r.decode("ascii") for r in PRINTABLE_RUN.findall(layer.data))
        lowered = haystack
        candidates = {v: _spellings(v) for v in needles.words if len(v) >= BINARY_MIN}
    found = [
        (needles.words[value], value)
        for value, forms in candidates.items()
        if any(_boundary_hit(lowered, form) for form in forms)
    ]
    tokens = set(UID_TOKEN.findall(haystack))
    found += [("uid", uid) for uid in tokens & needles.uids]
    longest = max(map(len, needles.uids), default=0)
    for token in tokens:
        if len(token) > longest:
            found += [("uid", uid) for uid in needles.uids if uid in token]
    return found


@dataclass
class SearchReport:
    """What was searched, every hit as (where, category, value), and decodings that failed."""

    files: int = 0
    n_bytes: int = 0
    layers: Counter = field(default_factory=Counter)
    hits: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def search(self, where: str, data: bytes, needles: Needles) -> None:
        for layer in layers(where, data, failures=self.failures):
            self.layers[layer.kind] += 1
            self.hits += [(layer.where, c, v) for c, v in search_layer(layer, needles)]

    def search_files(self, root: Path, needles: Needles, label: str) -> None:
        """Every file under `root`, and every file's path (names can carry identifiers too)."""
        paths = sorted(p for p in root.rglob("*") if p.is_file())
        names = [str(p.relative_to(root)) for p in paths]
        self.search(f"{label}/<file names>", "\n".join(names).encode(), needles)
        # Snakemake names its metadata files by the URL-safe base64 of the output path.
        decoded = [d for p in paths for d in map(_base64_name, p.relative_to(root).parts) if d]
        self.layers["file-name-base64"] += len(decoded)
        for layer in layers(f"{label}/<file names>!base64", "\n".join(decoded).encode()):
            self.hits += [(layer.where, c, v) for c, v in search_layer(layer, needles)]
        for path in paths:
            data = path.read_bytes()
            self.files += 1
            self.n_bytes += len(data)
            self.search(f"{label}/{path.relative_to(root)}", data, needles)


def search_all(roots: Iterable[tuple[str, Path]], needles: Needles) -> SearchReport:
    """Search every file under each (label, folder)."""
    report = SearchReport()
    for label, root in roots:
        report.search_files(root, needles, label)
    return report
