"""Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), token ids identical to llama.cpp's.

tokenizer.ggml.model:
  llama  SentencePiece BPE (Llama 2, Mistral, Mixtral). The pieces, scores and types are rebuilt into a
         sentencepiece ModelProto (serialized by hand below) and encoded by the sentencepiece library.
  gpt2   byte-level BPE (SmolLM2, Llama 3, Mistral Nemo's Tekken): merges ranked by position, words cut by
         the regexes that `tokenizer.ggml.pre` names. The regexes run over llama.cpp's "collapsed" text
         (one placeholder character per Unicode category for code points >= 128), so words split exactly
         where llama.cpp splits them, Unicode-version differences aside.
Both first cut the text at special tokens as llama.cpp's tokenizer_st_partition does: user-defined tokens
always, control and unknown tokens only with special=True. The behaviour follows llama.cpp's
src/llama-vocab.cpp and src/unicode.cpp; the code is our own.
"""
import codecs
import re
import struct

import numpy as np

import sentencepiece

# gguf.TokenType; sentencepiece's piece types use the same numbers
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp marks these texts end-of-generation (and control) whatever the file says
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["])
# fill-in-the-middle texts llama.cpp recognises when the file names no id; the last three kinds end generation
_FIM_TEXTS = {
    "pre": ["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
            "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"],
    "suf": ["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
            "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"],
    "mid": ["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
            "\u2581<MID>", "<|code_middle|>", "<|middle|>"],
    "pad": ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    "rep": ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    "sep": ["<|file_sep|>"],
}


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Build with Tokenizer.from_metadata(md)."""

    model = ""
    add_space_prefix = False  # SentencePiece: a space before each text fragment, dropped again by decode

    @classmethod
    def from_metadata(cls, md: dict) -> "Tokenizer":
        model = md.get("tokenizer.ggml.model")
        if model == "llama":
            return SpmTokenizer(md)
        if model == "gpt2":
            from .bpe import BpeTokenizer   # bpe builds on this module's Tokenizer

            return BpeTokenizer(md)
        raise ValueError(f"unsupported tokenizer.ggml.model {model!r}: supported are 'llama' "
                         f"(SentencePiece BPE) and 'gpt2' (byte-level BPE)")

    def __init__(self, md: dict, default_bos: int | None, default_eos: int | None, add_bos: bool):
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokenizer.ggml.tokens must be a non-empty array of strings")
        n = len(tokens)
        for key, kind in (("scores", "f"), ("token_type", "iu")):
            value = md.get(f"tokenizer.ggml.{key}")
            if value is not None and not (isinstance(value, np.ndarray) and value.dtype.kind in kind
                                          and value.shape == (n,)):
                raise ValueError(f"tokenizer.ggml.{key} must be a numeric array of {n} entries, one per token")
        for key in ("bos", "eos", "eot", "eom", "unknown", "padding"):
            value = md.get(f"tokenizer.ggml.{key}_token_id")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ValueError(f"tokenizer.ggml.{key}_token_id must be an integer, got {value!r}"[:200])
        self.tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # llama.cpp renames empty tokens
        types = md.get("tokenizer.ggml.token_type")
        self.types = [NORMAL] * n if types is None else [int(t) for t in list(types)[:n]]
        self.n_vocab = n
        self._ids = {t: i for i, t in enumerate(self.tokens)}

        def token_id(key, default=None):  # a file's id outside the vocabulary keeps the default
            default = default if default is not None and 0 <= default < n else None
            value = md.get(f"tokenizer.ggml.{key}_token_id")
            return int(value) if value is not None and 0 <= int(value) < n else default

        self.bos_id, self.eos_id = token_id("bos", default_bos), token_id("eos", default_eos)
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
        self.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
        eog = {i for i in (self.eos_id, token_id("eot"), token_id("eom")) if i is not None}
        for kind, texts in _FIM_TEXTS.items():
            tid = token_id("fim_" + kind)
            if tid is None:  # llama.cpp recognises one by its text and makes it a control token
                tid = next((self._ids[t] for t in texts if t in self._ids), None)
                if tid is not None:
                    self.types[tid] = CONTROL
            if kind in ("pad", "rep", "sep") and tid is not None:
                eog.add(tid)
        for t in _EOG_TEXTS & self._ids.keys():
            eog.add(self._ids[t])
            self.types[self._ids[t]] = CONTROL
        self.eog_ids = frozenset(eog)
        # special tokens, longest text first (llama.cpp sorts by byte length)
        special = [i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        special.sort(key=lambda i: -len(self.tokens[i].encode()))
        self._special = {True: special, False: [i for i in special if self.types[i] == USER_DEFINED]}
        self._pieces: list[bytes | None] = [None] * n

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's llama_tokenize(text, add_special=add_bos,
        parse_special=special): add_bos adds BOS (and EOS) only where the vocabulary asks for them
        (tokenizer.ggml.add_bos_token / add_eos_token); special=True turns control-token text into
        its token."""
        ids = [self.bos_id] if add_bos and self.add_bos and self.bos_id is not None else []
        for fragment in self._partition(text, special):
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                ids.extend(self._encode_fragment(fragment))
        if add_bos and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _partition(self, text: str, special: bool) -> list:
        """Text cut at special tokens: a list of str (raw text) and int (token id) fragments."""
        fragments = [text] if text else []
        for tid in self._special[special]:
            piece = self.tokens[tid]
            if not any(isinstance(f, str) and piece in f for f in fragments):
                continue
            out = []
            for f in fragments:
                if isinstance(f, int) or piece not in f:
                    out.append(f)
                    continue
                for k, part in enumerate(f.split(piece)):  # non-overlapping, left to right
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            fragments = out
        return fragments

    def _encode_fragment(self, text: str) -> list[int]:
        raise NotImplementedError

    # -- decoding ---------------------------------------------------------------------------------

    def token_bytes(self, id: int, special: bool = False) -> bytes:
        """Raw bytes of a token's piece (llama_token_to_piece): control and unknown tokens are empty
        unless special=True; byte tokens give their byte; may be part of a UTF-8 character."""
        if not 0 <= id < self.n_vocab:
            raise ValueError(f"token id {id} is outside the vocabulary [0, {self.n_vocab})")
        kind = self.types[id]
        if kind in (CONTROL, UNKNOWN):
            return self.tokens[id].encode() if special else b""
        piece = self._pieces[id]
        if piece is None:
            text = self.tokens[id]
            if kind == USER_DEFINED:
                piece = text.encode()
            elif kind == NORMAL:
                piece = self._normal_bytes(text)
            elif kind == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                piece = bytes([int(text[3:5], 16)])
            else:  # unused and undefined types render as nothing
                piece = b""
            self._pieces[id] = piece
        return piece

    def _normal_bytes(self, text: str) -> bytes:
        raise NotImplementedError

    def decode(self, ids, special: bool = False) -> str:
        """Text of a whole sequence: the pieces joined, SentencePiece's leading space (the one encode puts
        before the text) dropped whether or not a BOS comes first (llama_detokenize drops it only without
        one, llama-cpp-python's detokenize only with one). Invalid UTF-8 becomes U+FFFD."""
        data = b"".join(self.token_bytes(int(i), special) for i in ids)
        if self.add_space_prefix and data[:1] == b" ":
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def is_eog(self, id: int) -> bool:
        """End of generation: EOS, EOT, EOM and the other tokens llama.cpp treats so."""
        return id in self.eog_ids


class StreamDecoder:
    """Detokenize one id at a time: push(id) returns the text that became complete, never half a
    UTF-8 character; flush() returns what is left. Pushing ids one by one and flushing gives exactly
    tokenizer.decode(ids). at_start=False continues after a prompt: the SentencePiece leading space
    of the first piece is kept (" Paris" after "The capital of France is")."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False, at_start: bool = True):
        self.tokenizer, self.special = tokenizer, special
        self._strip_space = at_start and tokenizer.add_space_prefix
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        data = self.tokenizer.token_bytes(int(id), self.special)
        if self._strip_space and data:
            self._strip_space = False
            data = data[1:] if data[:1] == b" " else data
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# -- SentencePiece ------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values take ten bytes, as protobuf writes them
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: bytes -> length-delimited (wire type 2), float -> fixed32 (5), int -> varint."""
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def spm_model_proto(pieces: list[str], scores: list[float], types: list[int], byte_fallback: bool) -> bytes:
    """A serialized sentencepiece ModelProto for a BPE model (sentencepiece_model.proto field numbers):
    pieces(1){piece 1, score 2, type 3}; trainer_spec(2){model_type 3 = BPE 2, vocab_size 4,
    byte_fallback 35, unk_id 40, bos_id 41, eos_id 42}; normalizer_spec(3){name 1, add_dummy_prefix 3,
    remove_extra_whitespaces 4, escape_whitespaces 5}: identity normalisation, spaces become U+2581."""
    out = [_field(1, _field(1, p.encode()) + _field(2, float(s)) + _field(3, t))
           for p, s, t in zip(pieces, scores, types)]
    trainer = (_field(3, 2) + _field(4, len(pieces)) + _field(35, byte_fallback)
               + _field(40, types.index(UNKNOWN)) + _field(41, -1) + _field(42, -1))
    normalizer = _field(1, b"identity") + _field(3, 0) + _field(4, 0) + _field(5, 1)
    return b"".join(out) + _field(2, trainer) + _field(3, normalizer)


class SpmTokenizer(Tokenizer):
    """tokenizer.ggml.model = llama. llama.cpp's SPM tokenizer merges the adjacent pair whose joined text
    is the highest-scoring token (ties: leftmost), over every token whatever its type, and falls back to
    <0xNN> byte tokens; sentencepiece's BPE does the same once every piece but the unknown and byte
    ones is given type NORMAL, so that is what the rebuilt model holds."""

    model = "llama"

    def __init__(self, md: dict):
        super().__init__(md, default_bos=1, default_eos=2, add_bos=True)
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        scores = md.get("tokenizer.ggml.scores")
        scores = [0.0] * self.n_vocab if scores is None else [float(s) for s in list(scores)[:self.n_vocab]]
        is_byte = [k == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t) is not None
                   for k, t in zip(self.types, self.tokens)]
        self._byte_fallback = sum(is_byte) == 256
        types = [BYTE if b and self._byte_fallback else NORMAL for b in is_byte]
        pieces = list(self.tokens)
        self._unk = next((i for i, k in enumerate(self.types) if k == UNKNOWN), None)
        if self._unk is None:  # sentencepiece needs one unknown piece; this one is never produced
            self._unk = len(pieces)
            pieces, scores = pieces + [f"<unk:{len(pieces)}>"], scores + [0.0]
            types.append(UNKNOWN)
        types[self._unk] = UNKNOWN
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(spm_model_proto(pieces, scores, types, self._byte_fallback))
        except RuntimeError as e:   # e.g. a piece defined twice
            raise ValueError(f"bad SentencePiece vocabulary: {str(e).splitlines()[0]}") from None

    def _encode_fragment(self, text: str) -> list[int]:
        # llama.cpp puts a space before every fragment: each starts the text or follows a special token
        ids = self._sp.encode(" " + text if self.add_space_prefix else text)
        if not self._byte_fallback and self._unk in ids:  # llama.cpp would fail here too
            raise ValueError(f"text {text!r} needs byte tokens <0xNN> that this vocabulary lacks")
        return ids

    def _normal_bytes(self, text: str) -> bytes:
        return text.replace("\u2581", " ").encode()
