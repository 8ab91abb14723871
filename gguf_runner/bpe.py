"""Byte-level BPE (tokenizer.ggml.model = gpt2: SmolLM2, Llama 3, Mistral Nemo's Tekken): merges ranked
by position, words cut by the regexes that `tokenizer.ggml.pre` names. The regexes run over llama.cpp's
"collapsed" text (one placeholder character per Unicode category for code points >= 128), so words split
exactly where llama.cpp splits them, Unicode-version differences aside. Follows llama.cpp's
src/llama-vocab.cpp and src/unicode.cpp; the code is our own.
"""
import heapq
import re
import unicodedata


from .tokenizer import Tokenizer

# -- byte-level BPE -----------------------------------------------------------------------------------

def _byte_chars() -> list[str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the rest for 256+k."""
    kept = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


_BYTE_CHARS = _byte_chars()
_BYTE_ENCODE = {b: c for b, c in enumerate(_BYTE_CHARS)}  # str.translate table over Latin-1 text
_BYTE_DECODE = {c: b for b, c in enumerate(_BYTE_CHARS)}

# llama.cpp's collapsed text: ASCII stays; other code points become one placeholder per category
_WHITESPACE = frozenset([0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
_CATEGORY_CHAR = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}  # anything else: \xd0
_CATEGORY_ASCII = {"N": "0-9", "L": "A-Za-z", "P": r"!-#%-*,-/:-;?-@\[-\]_\{\}", "M": "",
                   "S": r"\$\+<=>\^`\|~"}


class _Collapse(dict):
    def __missing__(self, cp: int) -> int:
        if cp < 0x80:
            v = cp
        elif cp in _WHITESPACE:
            v = 0x0B  # matched by \s, as in llama.cpp
        else:
            v = ord(_CATEGORY_CHAR.get(unicodedata.category(chr(cp))[0], "\xd0"))
        if len(self) > 1 << 16:  # a cache, kept small
            self.clear()
        self[cp] = v
        return v


_COLLAPSE = _Collapse()


def _compile(expr: str) -> re.Pattern:
    r"""A llama.cpp pre-tokenizer regex for collapsed text: \p{X} becomes its placeholder plus its ASCII
    members (inside a class or as a class of its own); \s is ASCII whitespace, as in std::regex."""
    out, inside, i = [], False, 0
    while i < len(expr):
        if expr.startswith("\\p{", i):
            end = expr.index("}", i)
            cat = expr[i + 3]
            body = _CATEGORY_CHAR[cat] + _CATEGORY_ASCII[cat]
            out.append(body if inside else f"[{body}]")
            i = end + 1
            continue
        step = 2 if expr[i] == "\\" else 1
        if expr[i] == "[":
            inside = True
        elif expr[i] == "]":
            inside = False
        out.append(expr[i:i + step])
        i += step
    return re.compile("".join(out), re.ASCII)


# the regexes as llama.cpp writes them (its gpt2 and llama3 ones run as equivalent hand-written loops)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
           r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# (names, regexes applied in turn, ignore_merges, add_bos default)
_PRE_TOKENIZERS = [
    (["default", ""], [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], False, False),
    (["gpt-2", "phi-2", "mpt", "olmo", "jais"], [_GPT2], False, False),
    (["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
     [r"\p{N}", _GPT2], False, False),
    (["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"], [_LLAMA3], True, True),
    (["dbrx", "smaug-bpe"], [_LLAMA3], False, False),
    (["tekken"], [_TEKKEN], True, True),
]
_PRE = {name: spec for names, *spec in _PRE_TOKENIZERS for name in names}


class BpeTokenizer(Tokenizer):
    """tokenizer.ggml.model = gpt2: words from the pre-tokenizer, each byte-encoded (GPT-2 table) and
    merged lowest merge rank first (ties: leftmost), as llama.cpp's llm_tokenizer_bpe_session."""

    model = "gpt2"

    def __init__(self, md: dict):
        super().__init__(md, default_bos=11, default_eos=11, add_bos=False)  # llama.cpp's gpt2 defaults
        self.pre = md.get("tokenizer.ggml.pre", "")
        if not isinstance(self.pre, str) or self.pre not in _PRE:
            raise ValueError(f"unsupported tokenizer.ggml.pre {self.pre!r} for a gpt2 tokenizer: "
                             f"supported are {', '.join(sorted(n for n in _PRE if n))}")
        regexes, self._ignore_merges, add_bos = _PRE[self.pre]
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
        self._regexes = [_compile(r) for r in regexes]
        merges = md.get("tokenizer.ggml.merges")
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise ValueError("a gpt2 tokenizer needs tokenizer.ggml.merges, an array of strings")
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(md["tokenizer.ggml.merges"]):
            cut = merge.find(" ", 1)
            self._ranks.setdefault((merge[:cut], merge[cut + 1:]) if cut > 0 else ("", ""), rank)
        self._cache: dict[str, list[int]] = {}

    def words(self, text: str) -> list[str]:
        """The pre-tokenizer: each regex re-splits every piece so far; unmatched stretches are pieces too."""
        collapsed = text.translate(_COLLAPSE)
        spans = [(0, len(text))]
        for rx in self._regexes:
            out = []
            for start, end in spans:
                pos = start
                for m in rx.finditer(collapsed, start, end):
                    if m.start() > pos:
                        out.append((pos, m.start()))
                    out.append(m.span())
                    pos = m.end()
                if pos < end:
                    out.append((pos, end))
            spans = out
        return [text[a:b] for a, b in spans]

    def _encode_fragment(self, text: str) -> list[int]:
        ids = []
        for word in self.words(text):
            word = word.encode().decode("latin-1").translate(_BYTE_ENCODE)
            cached = self._cache.get(word)
            if cached is None:
                cached = self._cache[word] = self._bpe(word)
                if len(self._cache) > 100_000:
                    self._cache.clear()
            ids.extend(cached)
        return ids

    def _bpe(self, word: str) -> list[int]:
        if self._ignore_merges and word in self._ids:
            return [self._ids[word]]
        syms = list(word)  # one symbol per character; "" once merged into its left neighbour
        nxt, prv = [*range(1, len(syms)), -1], list(range(-1, len(syms) - 1))
        heap = []

        def push(a, b):
            rank = self._ranks.get((syms[a], syms[b]))
            if rank is not None:
                heapq.heappush(heap, (rank, a, b, syms[a] + syms[b]))

        for i in range(len(syms) - 1):
            push(i, i + 1)
        while heap:
            _, a, b, joined = heapq.heappop(heap)
            if not syms[a] or not syms[b] or syms[a] + syms[b] != joined:
                continue  # stale: one side has merged since
            syms[a], syms[b] = joined, ""
            nxt[a] = nxt[b]
            if nxt[b] >= 0:
                prv[nxt[b]] = a
            if prv[a] >= 0:
                push(prv[a], a)
            if nxt[a] >= 0:
                push(a, nxt[a])
        ids = []
        for s in filter(None, syms):
            if s in self._ids:
                ids.append(self._ids[s])
            else:  # llama.cpp falls back to single-byte tokens, dropping bytes that have none
                ids.extend(self._ids[c] for c in s if c < "\x80" and c in self._ids)
        return ids

    def _normal_bytes(self, text: str) -> bytes:
        # a character outside the byte table becomes llama.cpp's marker "[UNK_BYTE_0x<utf8 hex><token>]"
        return b"".join(bytes([_BYTE_DECODE[c]]) if c in _BYTE_DECODE
                        else f"[UNK_BYTE_0x{c.encode().hex()}{text}]".encode() for c in text)

