"""Class names and zero-shot templates from files, per data set: a text file (one per line; a blank line between
entries is refused by name, since readers disagree on it — CLIP_benchmark 1.6 keeps it as an empty class, 1.4 drops
it and shifts every later class against its labels), a JSON list, or
CLIP_benchmark's JSON files as they are — an object whose keys are data-set names (`--custom_classname_file`,
`--custom_template_file`: {"cifar10": ["airplane", ...]}, {"cifar10": ["a photo of a {c}.", ...]}). Templates
take the class name where they say "{}" or CLIP_benchmark's "{c}". A CuPL-style file, whose entries map each class
name to its own prompts ({"cifar10": {"airplane": ["a photo of an airplane flying.", ...]}}), gives class-specific
prompts: harness.zero_shot_classifier averages each class's own.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..infra.suite import ConfigError


def _read(source, dataset: str, what: str):
    """A list (or a class -> prompts dict) from `source`: a list given inline, or a file."""
    if isinstance(source, (list, tuple, dict)):
        return source
    from ..infra import inputs

    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} for data set {dataset!r} does not exist")
    inputs.fingerprint(path)  # a finished unit that read it is computed again when it changes
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        lines = [line.strip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()  # blank lines at the end say nothing
        blank = [i + 1 for i, line in enumerate(lines) if not line]
        if blank:  # CLIP_benchmark 1.6's reader keeps it (an empty class), 1.4's drops it (every later class moves)
            raise ConfigError(f"{what} file {path}: line {blank[0]} is blank ({len(blank)} blank line(s) between "
                              f"entries): one {what.replace('-', ' ')} per line, none empty — remove the blank lines "
                              "(kept, it would be an empty entry; dropped, every later class index would shift)")
        return lines
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} file {path} is not valid JSON ({e})") from None
    if isinstance(value, dict):  # CLIP_benchmark's: keyed by data-set name
        keys = [k for k in (dataset, dataset.rpartition("/")[2], dataset.partition(":")[2]) if k in value]
        if not keys and len(value) == 1:
            keys = list(value)
        if not keys:
            raise ConfigError(f"{what} file {path} has no entry for data set {dataset!r} (its keys: "
                              f"{', '.join(sorted(value)[:10])}{' ...' if len(value) > 10 else ''})")
        value = value[keys[0]]
    if not isinstance(value, (list, dict)) or not value:
        raise ConfigError(f"{what} file {path}: expected a non-empty list for {dataset!r}")
    return value


def classnames(source, dataset: str, count: int | None = None) -> list[str]:
    names = _read(source, dataset, "class-name")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"class names for {dataset!r}: expected a list of strings")
    if count is not None and len(names) != count:
        raise ConfigError(f"class names for {dataset!r}: {len(names)} given, the data set has {count} classes")
    return names


def templates(source, dataset: str) -> list[str] | dict[str, list[str]]:
    """Templates with "{}" for the class name (CLIP_benchmark's "{c}" read as "{}"), or {class name: prompts}."""
    value = _read(source, dataset, "template")
    if isinstance(value, dict):
        return {str(k): list(v) for k, v in value.items()}
    if not all(isinstance(t, str) for t in value):
        raise ConfigError(f"templates for {dataset!r}: expected strings")
    return [t.replace("{c}", "{}") for t in value]
