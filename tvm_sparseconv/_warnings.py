"""Warnings that point at the caller's line, not at this library's internals."""

from __future__ import annotations

import os
import sys
import warnings

_PKG_DIRS = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schedules"),
)


def warn_user(message: str, category: type[Warning]) -> None:
    """`warnings.warn` with the stack level of the first frame outside this package."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
