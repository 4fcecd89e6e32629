"""A pickle that runs code when loaded, for the tests of every restricted reader.

Unpickling :class:`CodeRunningPayload` without restrictions runs ``touch <marker>``; a reader that
refuses it leaves ``marker`` absent, which is what the tests check.
"""

from __future__ import annotations

import os
import pathlib


class CodeRunningPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
