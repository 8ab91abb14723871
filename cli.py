"""The gguf-runner command line (thin: parse, call, print). Flags follow llama.cpp's names.

Settings: models.yaml `defaults:` (context_length, temperature, max_tokens), then the model entry's
`sampling:` block, then flags. Errors: one `error: ...` line on stderr and exit code 2.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

# Ctrl-C must reach the main thread: a terminal's SIGINT handed to a worker thread (OpenBLAS starts its
# pool when numpy loads, Numba on first use) never interrupts the main thread's blocking read, and Ctrl-C
# at the chat prompt would hang. Threads inherit the signal mask of the thread that starts them, so the
# pools start with SIGINT blocked; then the main thread takes it back.
_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
try:
    import numpy as np

    from gguf_runner import GGUFError, ModelError
    from gguf_runner.bench import peak_rss
    from quant import QuantizedTensor, matmul

    # one small product through each pool (BLAS, Numba) starts their threads now, under the mask
    matmul(QuantizedTensor("warm-up", 0, (64, 64), np.zeros((64, 256), np.uint8)), np.ones((2, 64), np.float32))
finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, _mask)


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def timing_lines(c) -> str:
    t = c.timings
    return (f"prompt:    {t.prompt_tokens} tokens in {t.prompt_seconds:.2f} s ({t.prompt_tps:.2f} tokens/s)\n"
            f"generated: {t.generated_tokens} tokens in {t.generation_seconds:.2f} s ({t.tps:.2f} tokens/s), "
            f"finish: {c.finish_reason}\n"
            f"time to first token: {t.time_to_first_token:.2f} s\n"
            f"peak RSS: {human(peak_rss())}")


@click.group()
def main():
    """Run quantized GGUF language models (Mistral, Mixtral, Llama 2) on a CPU."""


# --- shared flags ---------------------------------------------------------------------------------
MODEL_FLAGS = [
    click.option("-m", "--model", default=None, help="GGUF path or models.yaml name [default: models.yaml's default]"),
    click.option("-c", "--ctx-size", "n_ctx", type=int, help="context size in tokens [models.yaml: 1024]"),
    click.option("-t", "--threads", "n_threads", type=int, default=None, help="CPU threads [all cores]"),
]
GEN_FLAGS = [
    click.option("-n", "--n-predict", type=int, help="tokens to generate, -1 = until the context is full"),
    click.option("--temp", type=float, help="temperature, 0 = greedy [models.yaml: 0.7]"),
    click.option("--top-k", type=int, help="top-k, <= 0 = off [40]"),
    click.option("--top-p", type=float, help="top-p in (0, 1], 1 = off [0.95]"),
    click.option("--min-p", type=float, help="min-p, 0 = off [0.05]"),
    click.option("--typical", type=float, help="locally typical sampling, 1 = off [1.0]"),
    click.option("--repeat-penalty", type=float, help="1 = off [1.0]"),
    click.option("--repeat-last-n", type=int, help="tokens the penalties look back over, -1 = all [64]"),
    click.option("--presence-penalty", type=float, help="[0.0]"),
    click.option("--frequency-penalty", type=float, help="[0.0]"),
    click.option("--seed", type=int, help="random seed, -1 = random [-1]"),
    click.option("--ignore-eos", is_flag=True, default=None, help="keep generating past end-of-sequence"),
    click.option("--stop", multiple=True, help="stop string (repeatable)"),
]
TEMPLATE_FLAG = click.option("--chat-template",
                             help="a template name (chatml, llama-2, mistral-instruct) or a jinja file")


FLAG_KEYS = {"n_predict": "max_tokens", "temp": "temperature", "typical": "typical_p",
             "repeat_last_n": "penalty_last_n"}   # click's parameter name -> generate()'s


def with_flags(f):
    """Adds MODEL_FLAGS, GEN_FLAGS and --chat-template (the command takes them as **opts)."""
    for option in reversed([*MODEL_FLAGS, *GEN_FLAGS, TEMPLATE_FLAG]):
        f = option(f)
    return f


def open_model(opts: dict):
    """Flags -> (Model, generate() keyword arguments, chat template or None). Flags are checked
    before the model loads."""
    from gguf_runner import load
    from gguf_runner.batch import check_generation
    from gguf_runner.registry import RegistryError, default_name, resolve, settings

    gen_flags = {FLAG_KEYS.get(k, k): v for k, v in opts.items()
                 if k not in ("model", "n_ctx", "n_threads", "chat_template")}
    gen_flags["stop"] = list(gen_flags["stop"]) or None
    template = opts["chat_template"]
    if template is not None and Path(template).is_file():
        try:
            template = Path(template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read chat template {opts['chat_template']}: {getattr(e, 'strerror', None) or e}")
    try:
        if opts["n_threads"] is not None and opts["n_threads"] < 1:
            raise ValueError(f"--threads must be >= 1, got {opts['n_threads']}")
        if opts["n_ctx"] is not None and opts["n_ctx"] < 1:
            raise ValueError(f"--ctx-size must be >= 1, got {opts['n_ctx']}")
        if gen_flags["max_tokens"] is not None and gen_flags["max_tokens"] < -1:
            raise ValueError(f"--n-predict must be >= 0, or -1 for 'until the context is full', "
                             f"got {gen_flags['max_tokens']}")
        name = opts["model"] or default_name()
        _, entry = resolve(name)
        n_ctx, gen = settings(entry, {"context_length": opts["n_ctx"], **gen_flags})
        gen = check_generation(gen)
        model = load(name, n_ctx=n_ctx, n_threads=opts["n_threads"])
        if template is not None:   # an unknown name fails now, not at the first answer
            model.render_chat([{"role": "user", "content": "hi"}], template)
    except (GGUFError, ModelError, RegistryError, ValueError) as e:
        fail(str(e))
    return model, gen, template


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    if prompt is not None and prompt_file is not None:
        fail("give -p/--prompt or -f/--file, not both")
    if prompt_file is None:
        if prompt is None:
            fail("no prompt: give -p TEXT or -f FILE (or use `gguf-runner chat`)")
        return prompt
    try:
        return sys.stdin.read() if prompt_file == "-" else Path(prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read prompt file {prompt_file}: {getattr(e, 'strerror', None) or e}")


# --- commands ---------------------------------------------------------------------------------------
@main.command()
@with_flags
@click.option("-p", "--prompt", help="prompt text (special tokens recognised; no chat template)")
@click.option("-f", "--file", "prompt_file", help="read the prompt from a file (- = stdin)")
@click.option("--chat", is_flag=True, help="wrap the prompt as a user message in the chat template")
@click.option("--system", help="system prompt (implies --chat)")
def run(prompt, prompt_file, chat, system, **opts):
    """Generate from one prompt. The text streams to stdout (and nothing else); timings to stderr."""
    text = read_prompt(prompt, prompt_file)
    model, gen, template = open_model(opts)
    out = click.get_binary_stream("stdout")
    try:
        if chat or system is not None or template is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            stream = model.chat(messages, chat_template=template, stream=True, **gen)
        else:
            stream = model.generate(text, stream=True, **gen)
        for piece in stream:
            out.write(piece.encode("utf-8"))
            out.flush()
    except ValueError as e:
        fail(str(e))
    except KeyboardInterrupt:
        click.echo("\n[interrupted]", err=True)
        sys.exit(130)
    except BrokenPipeError:   # `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        sys.exit(0)
    click.echo("\n" + timing_lines(stream.completion), err=True)


@main.command()
@with_flags
@click.option("--system", help="system prompt")
def chat(system, **opts):
    """Interactive chat with history. /help lists the commands."""
    from gguf_runner.repl import ChatSession, loop

    model, gen, template = open_model(opts)
    try:
        model.render_chat([{"role": "user", "content": "hi"}], template)
    except ValueError as e:
        fail(str(e))
    loop(ChatSession(model, system=system, chat_template=template, gen=gen))


@main.command()
@with_flags
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, help="JSONL output; a rerun skips the ids already in it")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "jsonl"]), default="auto",
              help="INPUT format; auto: jsonl for .jsonl/.ndjson/.json, else one prompt per line")
@click.option("--chat", is_flag=True, help="wrap each `prompt` as a user message in the chat template")
@click.option("--system", help="system prompt for chat items (implies --chat)")
def batch(input_path, output, fmt, chat, system, **opts):
    """Answer every prompt in INPUT (text: one per line; JSONL: {"id", "prompt" | "messages", ...})."""
    from gguf_runner.batch import BatchError, Output, read_items, run, summary

    try:
        items = read_items(input_path, fmt)
    except BatchError as e:
        fail(str(e))
    chat = chat or system is not None
    model, gen, template = open_model(opts)
    if chat or any(it.messages for it in items):
        try:   # a bad or missing template would turn every item into an error record
            model.render_chat([{"role": "user", "content": "hi"}], template)
        except ValueError as e:
            fail(str(e))
    try:
        out = Output(output)
        stats = run(model, items, out, gen, chat=chat, system=system, chat_template=template)
    except BatchError as e:
        fail(str(e))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: every finished item is saved; rerun the same command to resume", err=True)
        sys.exit(130)
    click.echo(summary(stats, output), err=True)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_models(as_json):
    """The models.yaml entries (with ~/.config/gguf-runner/models.yaml), their files, and which are here."""
    from gguf_runner.registry import RegistryError, listing, model_dir

    try:
        rows = listing()
    except RegistryError as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [4]) + 2
    fwidth = max([len(r["file"] or "") for r in rows] + [4]) + 2
    click.echo(f"  {'NAME':{width}}{'FILE':{fwidth}}PRESENT")
    for r in rows:
        how = "yes" if r["present"] else "no" + ("" if r["url"] or r["package"] else " (no url)")
        click.echo(f"{'*' if r['default'] else ' '} {r['name']:{width}}{r['file'] or '?':{fwidth}}{how}")
    click.echo(f"(* default; model directory: {model_dir()})")


@main.command()
@click.argument("name")
def pull(name):
    """Download a models.yaml model into the model directory ($GGUF_RUNNER_MODELS or ~/.cache/gguf-runner)."""
    from gguf_runner.pull import pull as download
    from gguf_runner.registry import RegistryError

    try:
        path = download(name)
    except (RegistryError, ValueError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or name}: {e.strerror}")
    except KeyboardInterrupt:
        fail("interrupted; rerun `gguf-runner pull` to resume", code=130)
    click.echo(str(path))


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
@click.argument("src")
@click.argument("dst")
@click.option("--type", "qtype", default="Q4_K_M", show_default=True,
              help="Q4_K_M, Q4_K_S, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, ...")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads [all cores]")
@click.option("--allow-requantize", is_flag=True, help="accept an already quantized input (dequantized first)")
def quantize(src, dst, qtype, threads, allow_requantize):
    """Quantize a GGUF file (F32/F16/BF16) to TYPE with llama.cpp's recipe; the output is written to a
    temporary file and renamed into place."""
    from quant.quantize import quantize_file

    if threads is not None and threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    try:
        out = quantize_file(src, dst, type=qtype.upper(), n_threads=threads, allow_requantize=allow_requantize)
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    click.echo(str(out))


@main.command()
@click.argument("shape", type=click.Choice(["mistral-7b", "mixtral-8x7b", "llama2-7b"]))
@click.argument("out", required=False)
@click.option("--layers", type=click.IntRange(min=1), default=None, help="fewer blocks than the real model")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(shape, out, layers, seed):
    """Write a GGUF with the real model's Q4_K_M tensor names, shapes and types, filled with random
    valid blocks (for speed and memory work: real weights cannot be downloaded here)."""
    from gguf_runner.synth import synth as make

    try:
        path = make(shape, out, layers, seed)
    except (OSError, ValueError) as e:
        fail(str(e))
    click.echo(f"{path} ({path.stat().st_size / 1e9:.2f} GB)")


@main.command()
@click.option("-m", "--model", required=True, help="GGUF path or models.yaml name")
@click.option("-p", "--n-prompt", default="128,512", show_default=True, help="prompt lengths, comma separated")
@click.option("-n", "--n-gen", type=click.IntRange(min=0), default=64, show_default=True, help="tokens generated")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("-r", "--reps", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--compare-llama-cpp", is_flag=True, help="also run llama.cpp (llama-cpp-python) on the same file")
@click.option("--json", "json_path", default=None, help="also write the report as JSON here")
def bench(model, n_prompt, n_gen, threads, reps, compare_llama_cpp, json_path):
    """Like llama-bench: load time, prompt and generation tokens/s (best and median of reps), peak RSS
    and resident bytes of the model mapping; ours beside llama.cpp's with --compare-llama-cpp."""
    from gguf_runner.bench import bench as measure
    from gguf_runner.bench import markdown
    from gguf_runner.registry import RegistryError, resolve

    try:
        sizes = tuple(int(n) for n in n_prompt.split(",") if n.strip())
        path, _ = resolve(model)
        report = measure(path, sizes, n_gen, threads, reps, compare_llama_cpp)
    except (GGUFError, ModelError, RegistryError, ValueError, OSError) as e:
        fail(str(e))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
