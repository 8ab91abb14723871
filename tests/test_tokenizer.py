"""Tokenizer oracle: token ids and pieces identical to llama.cpp's (llama-cpp-python, vocab_only=True).

Vocabularies: SmolLM2's byte-level BPE (the real GGUF), the same vocabulary re-labelled with other
pre-tokenizers and with user-defined tokens, a SentencePiece BPE model trained here (byte fallback,
user-defined and control pieces), and, when the `mistral-common` package is installed (it ships Mistral's
tokenizer files), Mistral 7B's v1 and v3 SentencePiece vocabularies and Mistral Nemo's Tekken BPE.
llama.cpp loads a vocab-only GGUF holding just general.architecture = llama and the tokenizer keys.
"""
import base64
import ctypes
import importlib.util
import io
import json
import mmap
import random
import struct
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import sentencepiece

from gguf_runner.tokenizer import BYTE, CONTROL, USER_DEFINED, StreamDecoder, Tokenizer

# -- hard strings -------------------------------------------------------------------------------------

HAND = [
    "", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "Hello", " Hello", "  Hello", "Hello ",
    "Hello world", "Hello  world", "Hello\nworld", "Hello\n\n\nworld", "Hello \n world", "Hello\t\tworld",
    "line1\r\nline2\r\n", "    indented code", "\tdef f(x):\n\t\treturn x", "trailing spaces   ",
    "naïve café résumé", "Ωμέγα λέξη", "Москва привет", "straße über", "ÀÉÎÕÜ àéîõü", "e\u0301 combining",
    "\u0301 lone mark", "ǅungla", "İstanbul", "ﬁne ligature", "日本語のテキスト", "中文字符测试", "한국어 텍스트",
    "混合 mixed テキスト", "😀", "emoji 😀👍🏽 ok", "family 👨\u200d👩\u200d👧 flag 🇫🇷", "🤖🤖🤖",
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-12e-5", "٣٤٥ ²³ ½ Ⅻ",
    "2024-01-01T12:00:00Z", "don't", "I'll we've they're she'd it's", "DON'T I'LL WE'VE", "'s 't 're",
    "x = {'a': [1, 2]}\n    return x", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "if __name__ == \"__main__\":\n    main()", "#include <stdio.h>", "SELECT * FROM t WHERE a >= 1;",
    "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Users\\name\\file.txt",
    "zero\u200bwidth", "joiner\u200d\u200c", "\ufeffBOM", "word\u2060join", "a\u00a0b", "a\u3000b",
    "a\u2009b\u202fc", "\x00\x01\x07\x1b\x7f", "\x1c\x1d\x1e\x1f", "\x85next line", "\u2028\u2029",
    "\U0001d518\U0001d52b\U0001d526", "\U000f0000 private", "\uffff\ufffd",
    "<s>", "</s>", "<unk>", "<s>Hello</s>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "<|im_start|><|im_end|>",
    "[INST] question [/INST]", "[INST][/INST]", "<0x0A>", "\u2581", "\u2581\u2581x", "<|user|>hi@@there",
    "@@", "<|user|>", "text<|user|>", "<|reponame|>", "<reponame>x<file_sep>", "<<<>>>", "[[INST]]",
    "!!!???...", "—–-", "«quotes» “curly” ‘single’", "...", "a.b,c;d:e", "$100 + 50% = ~", "^`|~<=>",
    "ALLCAPS lowercase MixedCase camelCase snake_case", "HTTPServer XMLParser", "AbCdEfGh",
    " " * 50, "\n" * 20, "\t" * 10 + "x", " \n" * 10, "x\r\r\ny", "1" * 60, "a" * 200, "😀" * 20, "ab " * 30,
    "'", "'''", "''s", "' s", "a' b'c", "I'M", "1.2.3.4", "0x1F", "1e10", "١٢٣٤٥٦٧", "𝟘𝟙𝟚", "Ⅷ",
    "[REFERENCE_DOC_1]", "[REFERENCE_DOC_10]x[REFERENCE_DOC_1]", "[TOOL_CALLS][IMG]", "[control_12]",
    "<SPECIAL_20>", "[PREFIX]a[SUFFIX]b[MIDDLE]",
]
POOL = [
    "Hello", "world", "the", "The", "naïve", "Ωμέγα", "日本", "한국", "😀", "👍🏽", "0", "42", "12345", "3.14",
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u200b", "'s", "'LL", "don't", "!", "?!",
    "...", "{", "}", "()", "=>", "//", "#", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]",
    "<|user|>", "@@", "<0x41>", "\u2581", "e\u0301", "ß", "İ", "ǅ", "٣", "½", "\x00", "\x1f", "http://a.b/c", "camelCase",
]


def generated(n: int, seed: int = 0) -> list[str]:
    """Random joins of hard pieces, and of random code points from several scripts."""
    rng = random.Random(seed)
    out = [f"{ws}{w}{ws2}" for ws in ("", " ", "  ", "\n", "\t") for w in ("Hello", "42", "日本", "!?")
           for ws2 in ("", " ", "\n ")]
    while len(out) < n:
        if rng.random() < 0.7:
            out.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 8))))
        else:
            ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3040, 0x30FF),
                      (0x4E00, 0x4FFF), (0xAC00, 0xAC80), (0x1F300, 0x1F64F), (0x2000, 0x206F)]
            out.append("".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 12))))
    return out


STRINGS = list(dict.fromkeys(HAND + generated(200)))


# -- GGUF vocabularies --------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # GGUF value type -> struct format


def read_metadata(path) -> dict:
    """GGUF metadata as the runtime hands it over: scalars, numeric arrays as numpy, string arrays as
    lists. Reads the key-value section directly: gguf.GGUFReader takes seconds on 100k-token vocabularies."""
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # strings decoded, arrays copied below
    assert data[:4] == b"GGUF", path
    n_kv, pos = struct.unpack_from("<Q", data, 16)[0], 24

    def string():
        nonlocal pos
        n = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + n
        return data[pos - n:pos].decode()

    def value(kind):
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item == 8:
                return [string() for _ in range(n)]
            arr = np.frombuffer(data, np.dtype(_SCALARS[item][1]).newbyteorder("<"), n, pos)
            pos += arr.nbytes
            return arr.copy()
        v = struct.unpack_from(_SCALARS[kind], data, pos)[0]
        pos += struct.calcsize(_SCALARS[kind])
        return v

    md = {}
    for _ in range(n_kv):
        key = string()
        kind = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        md[key] = value(kind)
    return md


def write_vocab_gguf(path, md: dict) -> Path:
    """A vocab-only GGUF: general.architecture = llama plus the tokenizer keys is all llama.cpp reads."""
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in md.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        if isinstance(value, (list, np.ndarray)):
            w.add_array(key, list(value) if isinstance(value, list) else value.tolist())  # typed by item
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
        if byte < 0x80:
            return value, i


def _fields(data: bytes):
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        if key & 7 == 0:
            value, i = _varint(data, i)
        elif key & 7 == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        elif key & 7 == 5:
            value, i = struct.unpack("<f", data[i:i + 4])[0], i + 4
        else:
            value, i = data[i:i + 8], i + 8
        yield key >> 3, value


_LLAMA_SPECIALS = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                   "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                   "tokenizer.ggml.add_eos_token": False}


def spm_metadata(model: bytes) -> dict:
    """GGUF tokenizer keys for a sentencepiece model, as llama.cpp's converter writes them."""
    pieces, normalizer = [], {}
    for number, value in _fields(model):
        if number == 1:
            f = dict(_fields(value))
            pieces.append((f[1].decode(), f.get(2, 0.0), f.get(3, 1)))
        elif number == 3:
            normalizer = dict(_fields(value))
    return {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [p for p, _, _ in pieces],
        "tokenizer.ggml.scores": np.array([s for _, s, _ in pieces], np.float32),
        "tokenizer.ggml.token_type": np.array([t for _, _, t in pieces], np.int32),
        "tokenizer.ggml.add_space_prefix": bool(normalizer.get(3, 1)), **_LLAMA_SPECIALS,
    }


def trained_spm() -> bytes:
    """A small SentencePiece BPE model in the Llama mould: byte fallback, digits split, whitespace pieces."""
    rng = random.Random(1)
    syllables = ["ka", "to", "ri", "an", "mel", "str", "ion", "ing", "ed", "qu", "é", "ü", "ñ", "ß", "да",
                 "ни", "мир", "日", "本", "語", "한", "국", "λο", "γι", "ar", "ven", "th", "er", "ou", "ai"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    code = ["def", "return", "(x)", "{}", "==", "->", "//", "#", "self.", "\t", "    ", "'s", "don't"]
    lines = []
    for _ in range(8000):
        line = " ".join(rng.choice(words if rng.random() < 0.8 else code) for _ in range(rng.randint(3, 15)))
        indent, number = rng.random() < 0.2, rng.random() < 0.1
        lines.append("    " * indent + line + f" {rng.randint(0, 10**6)}" * number)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=2000,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, user_defined_symbols=["<|user|>", "@@"],
        control_symbols=["[INST]", "[/INST]"], hard_vocab_limit=False, num_threads=2, minloglevel=2)
    return model.getvalue()


def mistral_common_file(name: str) -> Path:
    spec = importlib.util.find_spec("mistral_common")  # data files only; the package is not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mistral-common is not installed (it ships Mistral's tokenizer files)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def tekken_metadata(path: Path) -> dict:
    """Mistral Nemo's vocabulary from tekken.json (tiktoken ranks) as a gpt2 GGUF vocabulary: 1000 control
    tokens, then byte-level tokens; merges recovered from the ranks as HF's tiktoken converter does."""
    data = json.loads(path.read_text())
    n_special = data["config"]["default_num_special_tokens"]
    ranks = {base64.b64decode(t["token_bytes"]): t["rank"]
             for t in data["vocab"][:data["config"]["default_vocab_size"] - n_special]}
    chars = _gpt2_chars()
    text = {b: "".join(chars[x] for x in b) for b in ranks}
    merges = []
    for token, rank in ranks.items():
        splits = [(ranks[token[:k]], ranks[token[k:]]) for k in range(1, len(token))
                  if token[:k] in ranks and token[k:] in ranks]
        merges += [(rank, a, b) for a, b in sorted(splits)]
    by_rank = {r: b for b, r in ranks.items()}
    merges.sort(key=lambda m: m[0])
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "<pad>", "[PREFIX]", "[MIDDLE]",
                "[SUFFIX]"]
    specials += [f"<SPECIAL_{i}>" for i in range(len(specials), n_special)]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "tekken",
        "tokenizer.ggml.tokens": specials + [text[b] for b in sorted(ranks, key=ranks.get)],
        "tokenizer.ggml.token_type": np.array([CONTROL] * n_special + [1] * len(ranks), np.int32),
        "tokenizer.ggml.merges": [f"{text[by_rank[a]]} {text[by_rank[b]]}" for _, a, b in merges],
        **_LLAMA_SPECIALS,
    }


def _gpt2_chars() -> list[str]:
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


def smollm2_variant(md: dict, pre: str) -> dict:
    """SmolLM2's vocabulary under another pre-tokenizer, some tokens made user-defined."""
    md = dict(md, **{"tokenizer.ggml.pre": pre})
    types = np.array(md["tokenizer.ggml.token_type"])
    for text in ("<reponame>", "<filename>", "<|user|>", "@@", "Hello"):
        if text in md["tokenizer.ggml.tokens"]:
            types[md["tokenizer.ggml.tokens"].index(text)] = USER_DEFINED
    md["tokenizer.ggml.token_type"] = types
    return md


class Vocab:
    def __init__(self, path: Path):
        self.path = path
        self.tok = Tokenizer.from_metadata(read_metadata(path))
        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

    def oracle(self, text: str, add_bos=False, special=False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_bos, special=special)

    def oracle_text(self, ids, special=False) -> bytes:
        """llama-cpp-python's Llama.detokenize (pieces joined, the leading space dropped after BOS), with
        a buffer that fits long pieces (its own 32 bytes silently drops longer ones)."""
        buf, out = ctypes.create_string_buffer(1024), b""
        for i in ids:
            n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, i, buf, len(buf), 0, special)
            out += buf.raw[:n]
        return out[1:] if ids and ids[0] == self.llm.token_bos() and out[:1] == b" " else out


@pytest.fixture(scope="session")
def vocabs(tmp_path_factory, smollm2_path):
    root, cache = tmp_path_factory.mktemp("vocabs"), {}

    def get(name: str) -> Vocab:
        if name not in cache:
            if name == "smollm2":
                path = smollm2_path
            elif name.startswith("smollm2-"):
                md = smollm2_variant(read_metadata(smollm2_path), name.split("-", 1)[1])
                path = write_vocab_gguf(root / f"{name}.gguf", md)
            elif name.startswith("spm-trained"):  # -noprefix: tokenizer.ggml.add_space_prefix = false
                md = spm_metadata(trained_spm())
                md["tokenizer.ggml.add_space_prefix"] = "noprefix" not in name
                path = write_vocab_gguf(root / f"{name}.gguf", md)
            elif name.startswith("mistral-"):  # Mistral 7B v0.1 and v0.3 (control tokens [INST] ...)
                model = {"mistral-v1": "tokenizer.model.v1",
                         "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3"}[name]
                md = spm_metadata(mistral_common_file(model).read_bytes())
                path = write_vocab_gguf(root / f"{name}.gguf", md)
            else:  # tekken: Mistral Nemo
                md = tekken_metadata(mistral_common_file("tekken_240718.json"))
                path = write_vocab_gguf(root / "tekken.gguf", md)
            cache[name] = Vocab(path)
        return cache[name]

    return get


FAST = ["smollm2", "spm-trained", "spm-trained-noprefix", "mistral-v1", "mistral-v3", "smollm2-default",
        "smollm2-gpt-2", "smollm2-llama-bpe", "smollm2-dbrx"]
SLOW = ["smollm2-tekken", "tekken"]  # llama.cpp's std::regex for Tekken takes seconds
ALL = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


# -- tests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_ids_match_llama_cpp(vocabs, name):
    v = vocabs(name)
    cases = [(s, add_bos, special) for s in STRINGS for special in (False, True)
             for add_bos in ((False, True) if len(s) < 8 else (False,))]  # (text, add_bos, special)
    bad = [case for case in cases if v.tok.encode(*case) != v.oracle(*case)]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"


@pytest.mark.parametrize("name", ALL)
def test_pieces_and_round_trip(vocabs, name):
    v = vocabs(name)
    for s in STRINGS:
        for special in (False, True):
            ids = v.oracle(s, special=special)
            got = b"".join(v.tok.token_bytes(i, special) for i in ids)
            assert got == v.oracle_text(ids, special), (s, ids)
            # llama-cpp-python drops the SentencePiece leading space after BOS only; decode always does
            with_bos = v.oracle(s, add_bos=True, special=special)
            if v.oracle_text(with_bos, special) == s.encode() and not special:
                assert v.tok.decode(v.tok.encode(s, add_bos=False)) == s
                assert v.tok.decode(v.tok.encode(s, add_bos=True)) == s


@pytest.mark.parametrize("name", ["smollm2", "spm-trained"])
def test_stream_decoder(vocabs, name):
    tok, rng = vocabs(name).tok, random.Random(2)
    sequences = [tok.encode(s, special=True) for s in STRINGS]
    bytes_ids = [i for i, t in enumerate(tok.types) if t == BYTE]  # SentencePiece: characters split in bytes
    sequences += [[rng.choice(bytes_ids or range(tok.n_vocab)) for _ in range(12)] for _ in range(50)]
    sequences += [[rng.randrange(tok.n_vocab) for _ in range(30)] for _ in range(50)]
    for ids in sequences:
        for special in (False, True):
            stream = StreamDecoder(tok, special=special)
            parts = [stream.push(i) for i in ids] + [stream.flush()]
            assert "".join(parts) == tok.decode(ids, special=special)


def test_stream_decoder_holds_partial_characters(vocabs):
    tok = vocabs("spm-trained").tok
    byte = {tok.tokens[i]: i for i, t in enumerate(tok.types) if t == BYTE}
    ids = [byte[f"<0x{b:02X}>"] for b in "é😀".encode()]  # 2 + 4 bytes
    stream = StreamDecoder(tok)
    assert [stream.push(i) for i in ids] == ["", "é", "", "", "", "😀"]
    assert stream.flush() == ""
    stream = StreamDecoder(tok)
    assert stream.push(ids[2]) == "" and stream.flush() == "\ufffd"  # a truncated character at the end
    space = tok.encode(" Paris", add_bos=False)  # ["▁▁Paris"...]: one leading space is the prefix
    assert "".join(StreamDecoder(tok).push(i) for i in space) == " Paris" == tok.decode(space)
    assert "".join(StreamDecoder(tok, at_start=False).push(i) for i in space) == "  Paris"


@pytest.mark.parametrize("name", ALL)
def test_special_ids_match_llama_cpp(vocabs, name):
    v = vocabs(name)
    vocab = v.llm._model.vocab
    assert v.tok.n_vocab == llama_cpp.llama_vocab_n_tokens(vocab)
    assert v.tok.bos_id == llama_cpp.llama_vocab_bos(vocab)
    assert v.tok.eos_id == llama_cpp.llama_vocab_eos(vocab)
    assert v.tok.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
    assert v.tok.eog_ids == {i for i in range(v.tok.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert all(v.tok.is_eog(i) for i in v.tok.eog_ids)


def test_smollm2_basics(vocabs):
    tok = vocabs("smollm2").tok
    assert tok.model == "gpt2" and tok.pre == "smollm" and tok.n_vocab == 49152 and not tok.add_bos
    assert tok.encode("<|im_start|>user", special=True)[0] == 1
    assert 1 not in tok.encode("<|im_start|>user", special=False)
    assert tok.is_eog(2) and not tok.is_eog(1)
    assert tok.decode(tok.encode("<|im_end|>", special=True)) == ""
    assert tok.decode(tok.encode("<|im_end|>", special=True), special=True) == "<|im_end|>"


def test_unsupported_models_raise():
    with pytest.raises(ValueError, match="'bert'.*'llama'.*'gpt2'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen9", "tokenizer.ggml.tokens": ["a"],
          "tokenizer.ggml.merges": []}
    with pytest.raises(ValueError, match="'qwen9'.*llama-bpe.*smollm.*tekken"):
        Tokenizer.from_metadata(md)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer.from_metadata(dict(md, **{"tokenizer.ggml.pre": "gpt-2"})).token_bytes(1)
