"""Suite files: found, loaded, configured. A suite is a file suites/<name>.py with NAME, VERSION, EVALUATOR (a module
under harness.evals, or any importable module) and get_config(profile) -> dict for the profiles "default" and
"full"; "ci", the default profile at the size CI runs (every step of the GPU check on a CPU), is the default
profile with the suite's CI overrides applied ({dotted key: value}), and QUICK, REHEARSAL, MODEL_KEYS and
rehearsal_data(imagenet_dir) are read by the tools that need them (harness.tools.cli's gpu-check,
harness.tools.rehearsal). Suite files are Python, run as code by design: use only your own or ones you have read."""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType

from ..infra.suite import ConfigError

SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"
PROFILES = ("default", "full", "ci")


def suite_names(suites_dir: Path = SUITES_DIR) -> list[str]:
    return sorted(p.stem for p in suites_dir.glob("*.py") if not p.name.startswith("_"))


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> ModuleType:
    path = suites_dir / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"unknown suite {name!r}: choose from {', '.join(suite_names(suites_dir))} "
                         f"(files in {suites_dir})")
    spec = importlib.util.spec_from_file_location(f"vitclip_suites.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("NAME", "VERSION", "EVALUATOR", "get_config"):
        if not hasattr(module, attr):
            raise ConfigError(f"suite file {path} lacks {attr}")
    return module


def parse_assignments(items: list[str]) -> dict[str, object]:
    """["a.b=3", "name=vit"] -> {"a.b": 3, "name": "vit"}: each VALUE parsed as JSON where it parses (numbers,
    true/false/null, lists, objects), kept as a string otherwise."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=128 or "
                              "--set data.root=/data/imagenet")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def known_keys(config: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config (dicts are walked, lists are leaves)."""
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += known_keys(v, prefix + k + ".")
    return keys


def has_key(config: dict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def apply_overrides(config: dict, overrides: dict[str, object], suite: str) -> dict:
    """A copy of `config` with each dotted key set to its value; a key the config does not have is refused with
    the closest known keys (list items are reached by index: models.0.weights)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not has_key(config, key):
            keys = known_keys(config)
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
            raise ConfigError(f"suite {suite!r} has no config key {key!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else "")
                              + f". Known keys: {', '.join(keys)}")
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return config


def overrides_for(suite: str, config: dict, assignments: dict[str, object]) -> dict[str, object]:
    """The assignments that concern one suite: "SUITE.key" for it alone, a plain key for every suite that has it."""
    mine = {}
    for key, value in assignments.items():
        head, _, rest = key.partition(".")
        if head == suite and rest:
            mine[rest] = value
        elif has_key(config, key):
            mine[key] = value
    return mine


def config(suite: ModuleType, profile: str) -> dict:
    """A suite's config for `profile` ("ci": the default profile with the suite's CI overrides)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: choose from {', '.join(PROFILES)}")
    if profile == "ci":
        return apply_overrides(suite.get_config("default"), getattr(suite, "CI", {}), suite.NAME)
    return suite.get_config(profile)


@functools.cache
def _default_config(name: str, suites_dir: Path) -> dict:
    return load_suite(name, suites_dir).get_config("default")


def default_config(name: str, suites_dir: Path = SUITES_DIR) -> dict:
    """Suite `name`'s default-profile config (a copy): what a model that suite trains is built from. A suites
    folder of one's own that has no suite of that name uses the harness's own (suites/)."""
    suites_dir = Path(suites_dir)
    if not (suites_dir / f"{name}.py").is_file():
        suites_dir = SUITES_DIR
    return copy.deepcopy(_default_config(name, suites_dir))
