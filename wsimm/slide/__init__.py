"""Slide readers: one :class:`Slide` interface over openslide and tiffslide.

>>> from wsimm.slide import open_slide
>>> with open_slide("slide.svs") as s:  # doctest: +SKIP
...     s.backend, s.dimensions, s.mpp, s.mpp_source
"""

from __future__ import annotations

from wsimm.slide._base import MPP_RANGE, Slide, SlideInfo, as_rgb_uint8
from wsimm.slide._open import (
    BACKENDS,
    SLIDE_SUFFIXES,
    InspectResult,
    clear_cache,
    find_slides,
    inspect_slides,
    is_url,
    list_backends,
    open_slide,
    open_slide_cached,
)

__all__ = [
    "BACKENDS",
    "MPP_RANGE",
    "SLIDE_SUFFIXES",
    "InspectResult",
    "Slide",
    "SlideInfo",
    "as_rgb_uint8",
    "clear_cache",
    "find_slides",
    "inspect_slides",
    "is_url",
    "list_backends",
    "open_slide",
    "open_slide_cached",
]
