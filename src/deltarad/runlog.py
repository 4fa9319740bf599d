"""Logging for workflow jobs: everything to the rule's log, user errors also to the terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


class UserError(ValueError):
    """Bad input or configuration: reported as a message, without a traceback."""


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr of a job to `path`.

    A :class:`UserError` (or ValueError subclass raised by deltarad for bad input) is written to
    the log and to the terminal as its message, and the job exits with status 1; any other
    exception keeps its traceback in the log.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    real_stderr = sys.stderr
    with open(path, "w") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield logging.getLogger("deltarad")
        except UserError as err:
            fh.write(f"ERROR: {err}\n")
            fh.flush()
            print(f"ERROR: {err}\n(log: {path})", file=real_stderr)
            raise SystemExit(1) from None
        except Exception:
            fh.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
