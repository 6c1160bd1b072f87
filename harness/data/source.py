"""What a data source is to the registry (harness.data.SOURCES): one entry per source, beside the code that reads
it. A new source is a module with a SOURCE and its line in harness.data.SOURCES."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _no_check(spec, roles) -> None:
    return None


@dataclass(frozen=True)
class Source:
    load: Callable  # (spec, role, class names given or None) -> ImageData
    check: Callable = _no_check  # (spec, roles): its local files checked before any work (ConfigError)
    task: Callable = lambda spec: "classification"  # (spec) -> "classification", "retrieval" or "winogavil"
    templates: Callable = lambda spec: list(DEFAULT_TEMPLATES)  # (spec) -> its own templates, or None
    load_retrieval: Callable | None = None  # (spec) -> RetrievalData, for an image–caption set
    prefixed: bool = False  # named "SOURCE:PATH"
    check_name: Callable | None = None  # (the name after the prefix, or the whole name): ConfigError if unknown
