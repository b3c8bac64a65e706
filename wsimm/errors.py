"""The wsimm error hierarchy.

Every error wsimm raises on bad input is a :class:`WsimmError`, mixed with the builtin it
refines (``SlideNotFoundError`` is also a ``FileNotFoundError``), so callers can catch either.
Messages are one line: what is wrong, with which file, and how to fix it. The CLI prints
``error: <message>`` and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "MissingMPPError",
    "SlideNotFoundError",
    "SlideReadError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "UnsupportedSlideError",
    "WsimmError",
    "WsimmWarning",
]


class WsimmError(Exception):
    """Base class of every error wsimm raises on purpose."""


class ConfigError(WsimmError, ValueError):
    """An option or parameter has an invalid value."""


class MissingDependencyError(WsimmError, ImportError):
    """An optional dependency needed for this feature is not installed."""

    def __init__(self, package: str, *, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {package!r}; "
            f"install it with: pip install 'wsimm[{extra}]'"
        )


class SlideNotFoundError(WsimmError, FileNotFoundError):
    """The slide path does not exist."""


class SlideReadError(WsimmError, OSError):
    """The slide exists but cannot be read (corrupt, truncated, or unreadable)."""


class UnsupportedSlideError(SlideReadError):
    """The file is readable but is not a whole-slide image wsimm can use."""


class MissingMPPError(WsimmError, ValueError):
    """The slide does not say its physical pixel size and the user gave none."""


class StoreError(WsimmError, OSError):
    """The feature store is missing, inconsistent, or cannot be written."""


class StoreFormatError(StoreError):
    """The store was written by an incompatible wsimm version, or is not a wsimm store."""


class StoreLockedError(StoreError):
    """Another wsimm process is writing to this store."""


class DataError(WsimmError, ValueError):
    """A labels, outcome, omics or split table is unusable (missing ids, NaN times, ...)."""


class WsimmWarning(UserWarning):
    """Something was skipped or dropped on purpose (unmatched labels rows, ...)."""
