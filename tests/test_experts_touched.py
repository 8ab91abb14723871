"""Only the selected experts' pages are ever touched: after one token, the resident bytes of the
file's mapping stay within the non-expert weights plus k experts per layer."""
import os
import subprocess
import sys
import textwrap

import gguf
import numpy as np

from models import add_spm_vocab

DIM, HIDDEN, LAYERS, EXPERTS, VOCAB = 1024, 2048, 2, 8, 512
Q4_K = gguf.GGMLQuantizationType.Q4_K


def random_q4_k(rng, rows, cols):
    """Random valid Q4_K blocks (144 bytes per 256 weights) with small normal f16 scales."""
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, size=(rows, cols // 256, 2)).astype(np.float16)
    blocks[..., :4] = scales.view(np.uint8)
    return blocks.reshape(rows, cols // 256 * 144)


def write_mixtral(path, merged=True):
    rng = np.random.default_rng(0)
    g = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("context_length", 256), ("embedding_length", DIM), ("block_count", LAYERS),
                       ("feed_forward_length", HIDDEN), ("attention.head_count", 8),
                       ("attention.head_count_kv", 2), ("expert_count", EXPERTS), ("expert_used_count", 2)):
        g.add_uint32(f"llama.{key}", value)
    g.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    g.add_float32("llama.rope.freq_base", 1e6)
    add_spm_vocab(g, VOCAB)
    norm = np.ones(DIM, np.float32)

    def q4k(name, rows, cols, n=None):
        data = random_q4_k(rng, rows * (n or 1), cols)              # (rows, bytes per row)
        g.add_tensor(name, data.reshape(n, rows, -1) if n else data, raw_dtype=Q4_K)

    q4k("token_embd.weight", VOCAB, DIM)
    for i in range(LAYERS):
        p = f"blk.{i}."
        g.add_tensor(p + "attn_norm.weight", norm)
        g.add_tensor(p + "ffn_norm.weight", norm)
        q4k(p + "attn_q.weight", DIM, DIM)
        q4k(p + "attn_k.weight", 256, DIM)
        q4k(p + "attn_v.weight", 256, DIM)
        q4k(p + "attn_output.weight", DIM, DIM)
        g.add_tensor(p + "ffn_gate_inp.weight", rng.standard_normal((EXPERTS, DIM)).astype(np.float32))
        for kind, (rows, cols) in (("gate", (HIDDEN, DIM)), ("up", (HIDDEN, DIM)), ("down", (DIM, HIDDEN))):
            if merged:
                q4k(p + f"ffn_{kind}_exps.weight", rows, cols, n=EXPERTS)
            else:
                for e in range(EXPERTS):
                    q4k(p + f"ffn_{kind}.{e}.weight", rows, cols)
    g.add_tensor("output_norm.weight", norm)
    q4k("output.weight", VOCAB, DIM)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


PROBE = textwrap.dedent("""
    import sys, numpy as np, gguf_runner
    path = sys.argv[1]
    m = gguf_runner.load(path, n_threads=2)
    m.logits([7])
    rss = 0
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
    print(rss)
""")


def evict(path) -> None:
    """Make the file look like a model on disk, not one just written: the page cache of a freshly
    written file holds multi-MB folios that the kernel maps whole on first touch (seen on ext4,
    Linux 6.18), which would measure the kernel's write path, not which pages we read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_after_one_token(path) -> int:
    # A fresh process, so nothing else has mapped the file; Numba's cache keeps it quick.
    evict(path)
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def check(path):
    from gguf_runner.info import EXPERT_TENSOR

    r = gguf.GGUFReader(str(path))
    expert = sum(int(t.n_bytes) for t in r.tensors if EXPERT_TENSOR.search(t.name))
    non_expert = sum(int(t.n_bytes) for t in r.tensors) - expert
    per_expert_per_layer = expert // (EXPERTS * LAYERS)
    assert per_expert_per_layer > 3_000_000   # slabs of several MB
    budget = (non_expert + 2 * LAYERS * per_expert_per_layer) * 1.05
    rss = resident_after_one_token(path)
    print(f"resident {rss / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB, file {path.stat().st_size / 2**20:.1f} MiB")
    assert rss <= budget
    assert rss >= 2 * LAYERS * per_expert_per_layer * 0.9   # the chosen experts were really read


def test_only_selected_experts_are_resident_merged(tmp_path):
    write_mixtral(tmp_path / "mixtral-merged.gguf", merged=True)
    check(tmp_path / "mixtral-merged.gguf")


def test_only_selected_experts_are_resident_per_expert(tmp_path):
    write_mixtral(tmp_path / "mixtral-split.gguf", merged=False)
    check(tmp_path / "mixtral-split.gguf")
