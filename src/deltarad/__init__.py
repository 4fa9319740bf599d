"""DeltaRad: longitudinal radiomics, from scans before and after therapy to outcome."""

from importlib import metadata

try:
    __version__ = metadata.version("deltarad")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
