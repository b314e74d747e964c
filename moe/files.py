"""Writing a folder so that an interrupted write never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_folder(out: Path):
    """Yields an empty side folder to fill; when the block succeeds it takes the place of `out`
    (two renames), so a crash or Ctrl-C mid-write leaves the previous `out` intact."""
    out = Path(out)
    tmp, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
