"""The one exception the converter raises for bad input."""

from __future__ import annotations


class ConvertError(Exception):
    """A model directory, file or option the converter cannot use; the message names it."""
