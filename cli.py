"""The gguf-runner command line (thin: parse, call, print)."""
from __future__ import annotations

import json
import sys

import click

from gguf_runner import GGUFError, ModelError


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


@click.group()
def main():
    """Run quantized GGUF language models (Mistral, Mixtral, Llama 2) on a CPU."""


@main.command()
@click.argument("model")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=1), default=None, help="context size (tokens)")
@click.option("--sliding-window", default="auto", help="int, 'none' or 'auto'")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def inspect(model, n_ctx, sliding_window, as_json):
    """Architecture, dimensions, window, experts, tensor types, and the memory a run needs."""
    from gguf_runner.info import describe
    from gguf_runner.registry import RegistryError, resolve

    window = {"auto": "auto", "none": None}.get(sliding_window.lower())
    if window is None and sliding_window.lower() != "none":
        if not sliding_window.isdigit() or int(sliding_window) < 1:
            fail(f"--sliding-window must be a positive int, 'none' or 'auto', got {sliding_window!r}")
        window = int(sliding_window)
    try:
        path, entry = resolve(model)
        info = describe(path, n_ctx=n_ctx, sliding_window=window,
                        fallback_window=(entry or {}).get("sliding_window"))
    except (GGUFError, ModelError, RegistryError, ValueError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    sizes = ("file_size", "weights_bytes", "weights_read_per_token", "kv_cache_bytes")
    for key, value in info.items():
        if key == "tensor_types":
            value = ", ".join(f"{t}: {n}" for t, n in value.items())
        elif key in sizes:
            value = f"{human(value)} ({value} bytes)"
        elif value is None:
            value = "none"
        click.echo(f"{key:24} {value}")


@main.command()
def run():
    """Generate text (the command line lands with the CLI issue)."""
    click.echo("gguf-runner run: text generation from the command line is not built yet; "
               "use `gguf-runner inspect MODEL` or the Python API (gguf_runner.load).")


if __name__ == "__main__":
    main()
