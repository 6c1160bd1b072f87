"""Weight files checked before any work, without running code: a pickle that is not weights-only is refused, and
a file whose tensors belong to another architecture is named as such.

Weights are named by a string: "random" (the library's own initialisation after torch.manual_seed(seed)),
"pretrained" (timm's default tag) or an open_clip tag (from the Hugging Face cache, or the hub when online), or a
file path (a local checkpoint in the library's own format). timm's and open_clip's own loaders read a file with
torch.load(weights_only=True); where the harness reads one itself (here), it does the same and says why.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..infra import inputs
from ..infra.suite import ConfigError


def hub_file(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """The first of `filenames` a hub repo has in the Hugging Face cache (the hub when online), at `revision`, or
    None when none is there."""
    from huggingface_hub import hf_hub_download

    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, revision=revision)
        except Exception:  # not cached offline, not in the repo, no such repo or revision
            continue
    return None


def fingerprint_hub(path: str | Path, revision: str | None = None) -> None:
    """What a finished unit read from the Hugging Face cache (harness.infra.inputs): the snapshot folder a file or
    folder lies in, and the ref that named it (refs/<revision or main>), so that the unit is computed again when the
    ref moves to another commit, not only when a snapshot's files change."""
    path = Path(path)
    snapshot = next((p for p in (path, *path.parents) if p.parent.name == "snapshots"), None)
    if snapshot is None:  # not in the cache's layout (a local folder): the path itself
        inputs.fingerprint(path)
        return
    inputs.fingerprint(snapshot)
    ref = snapshot.parent.parent / "refs" / (revision or "main")
    if ref.is_file():
        inputs.fingerprint(ref)


def read_weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a user's weight file without running code: safetensors headers, or torch.load with
    weights_only=True (a pickle holding anything but tensors and plain containers is refused, with why)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:
            raise ConfigError(f"weights file {path} is not a readable safetensors file ({e})") from None
    import pickle

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) torch file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"weights file {path} is a pickle that is not weights-only: loading it would run code "
                          f"or build objects ({str(e).splitlines()[0][:200]}). The harness and timm/open_clip "
                          "load only tensors: re-save it as a state_dict (torch.save(model.state_dict(), path)) "
                          "or as safetensors, from a copy you trust") from None
    except Exception as e:
        raise ConfigError(f"weights file {path} cannot be read as a torch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "module"):  # the wrappers timm's and open_clip's loaders unwrap
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_file(weights: str, what: str, meta_model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """ConfigError for a weights file that does not exist or whose tensors do not fit `meta_model` (built on the meta
    device): no key in common, or a shape that differs (position embeddings may differ: the libraries resize
    them; so may the tensors under `skip`: a classifier built to the file's size). What this cannot see (a tensor
    missing, or one left over: a library's own conversion of a published format may rename keys first) the
    library's strict load refuses when the model is loaded."""
    if not Path(weights).is_file():
        raise ConfigError(f"weights {weights!r} for {what} are neither 'random', a pretrained tag nor an existing "
                          "file")
    found = read_weight_shapes(weights)
    expected = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    common = set(found) & set(expected)
    bad = [f"{k}: file {found[k]}, model {expected[k]}" for k in sorted(common)
           if found[k] != expected[k] and "pos" not in k and not k.startswith(skip)]
    if not common or bad:
        raise ConfigError(f"weights file {weights} does not fit {what}: "
                          + (f"shapes differ ({'; '.join(bad[:3])})" if bad else
                             f"no tensor name in common (file has e.g. {', '.join(sorted(found)[:3])})")
                          + ". Is it a checkpoint of another architecture?")
