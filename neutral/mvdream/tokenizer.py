"""CLIP BPE tokenizer (OpenCLIP / SD 2.1) from local files only, giving open_clip's ids for any text.

    tok = load_tokenizer("path/to/stable-diffusion-2-1-base/tokenizer")   # vocab.json + merges.txt
    tok = load_tokenizer("bpe_simple_vocab_16e6.txt.gz")                    # open_clip's merges file
    ids = tok(["a cat", "a dog"])   # np.int32 [2, 77]: <|startoftext|> ... <|endoftext|> 0 0 ...

The steps are those of open_clip's SimpleTokenizer (mlfoundations/open_clip, src/open_clip/tokenizer.py;
MVDream pins open-clip-torch==2.7.0 in bytedance/MVDream requirements.txt): `basic_clean` (ftfy.fix_text,
html.unescape twice, strip), `whitespace_clean`, lower case, its regex split (the `regex` module with
IGNORECASE, open_clip's special token names first), byte-level mapping, BPE with the "</w>" end-of-word
suffix. The `tokenizers` library only runs the BPE merges. Sequences longer than the context are cut
and end with <|endoftext|> at the last position (open_clip `tokenize`); shorter ones are padded with
id 0 (open_clip; SD 2.1's HF tokenizer pads with "!" = 0). tests/test_tokenizer.py checks the ids against
open_clip's own (tests/fixtures/tokenizer_openclip_ids.json).
A text that is cut is reported once per process on stderr, naming the words dropped (`truncation`).
`tokenizer_files` / `tokenizer_identity` name the files a tokenizer is read from and hash their contents
(the text-embedding cache key includes it).
"""
from __future__ import annotations

import gzip
import html
import json
import os
import sys
from typing import Iterable, Optional, Union

import ftfy
import numpy as np
import regex

from neutral.errors import MissingFileError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
HF_FILES = ("vocab.json", "merges.txt")
OPENCLIP_FILE = "bpe_simple_vocab_16e6.txt.gz"
TOKENIZER_HINT = (
    "The CLIP BPE tokenizer files (vocab.json and merges.txt) of SD 2.1 are in the 'tokenizer' folder of "
    "https://huggingface.co/stabilityai/stable-diffusion-2-1-base; download that folder and pass its path.")
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges (vocab 49408 with bytes and specials)
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip names its start/end tokens so and puts the names first in its split regex: a text holding
# "<start_of_text>" gets the start id there, while "<|startoftext|>" in a text is ordinary text.
OPENCLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
# the `regex` module, not `re` (no \p{..}) nor the tokenizers library's Oniguruma (older Unicode tables,
# other case folding under IGNORECASE): only the same engine and flags split every text as open_clip does
_SPLIT = regex.compile("|".join(OPENCLIP_SPECIALS) + "|" + SPLIT_PATTERN, regex.IGNORECASE)
WHERE_TO_GET = ("Get vocab.json and merges.txt from the 'tokenizer' folder of "
                "https://huggingface.co/stabilityai/stable-diffusion-2-1-base, or open_clip's "
                f"{OPENCLIP_FILE} (github.com/mlfoundations/open_clip, src/open_clip/), and pass the local path.")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode character map (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_TO_CHAR = bytes_to_unicode()


def clean_text(text: str) -> str:
    """open_clip's basic_clean, whitespace_clean and lower(): ftfy repairs mojibake, curly quotes,
    full-width letters and control characters; HTML entities are unescaped twice (as open_clip does)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def _parse_merges(lines: list[str], source: str) -> list[tuple[str, str]]:
    """Line 0 is a header in both formats ('#version: 0.2' / '"bpe_simple_vocab_16e6.txt#version')."""
    merges = []
    for i, line in enumerate(lines[1:NUM_MERGES + 1]):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: line {i + 2} is not a BPE merge 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """open_clip's vocabulary: 256 bytes, the same with '</w>', one token per merge, then specials."""
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def _read_lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().strip().split("\n")


def _resolve_files(path: str) -> tuple[str, ...]:
    """-> (vocab.json, merges.txt) or (bpe .gz,); FileNotFoundError names what is missing."""
    if os.path.isfile(path):
        if path.endswith(".gz") or path.endswith(".txt"):
            return (path,)
        raise MissingFileError(f"tokenizer path {path} is a file but not a BPE merges file "
                                f"({OPENCLIP_FILE}); pass the folder holding {' and '.join(HF_FILES)}. "
                                + WHERE_TO_GET)
    if not os.path.isdir(path):
        raise MissingFileError(f"tokenizer path not found: {path}. {WHERE_TO_GET}")
    hf = [os.path.join(path, f) for f in HF_FILES]
    if all(os.path.isfile(f) for f in hf):
        return tuple(hf)
    gz = os.path.join(path, OPENCLIP_FILE)
    if os.path.isfile(gz):
        return (gz,)
    missing = [f for f, p in zip(HF_FILES, hf) if not os.path.isfile(p)]
    raise MissingFileError(f"tokenizer files missing in {path}: {', '.join(missing)} "
                            f"(and no {OPENCLIP_FILE}). {WHERE_TO_GET}")


def tokenizer_files(path: str) -> tuple[str, ...]:
    """The files a tokenizer at `path` is read from; MissingFileError (a FileNotFoundError) names what is missing."""
    return _resolve_files(path)


# Hashed into tokenizer_identity: change it when the same files give other ids for some text. Text
# embeddings cached before ftfy and open_clip's split were always applied are then computed afresh.
TEXT_RULES = "open_clip SimpleTokenizer: ftfy, html.unescape x2, regex split with special names"


def tokenizer_identity(path: str) -> str:
    """sha256 over the tokenizer's text rules and the contents of its files (what the text-embedding cache
    is keyed on)."""
    import hashlib
    h = hashlib.sha256(TEXT_RULES.encode() + b"\0")
    for f in tokenizer_files(path):
        with open(f, "rb") as fh:
            h.update(os.path.basename(f).encode() + b"\0" + fh.read() + b"\0")
    return "tokenizer:" + h.hexdigest()


_WARNED: set = set()  # texts whose truncation was reported (once per process)


def warn_truncated(text: str, dropped: str, context_length: int, n_tokens: int) -> bool:
    """Print the truncation warning for `text` unless it was printed before; True when printed."""
    if text in _WARNED:
        return False
    _WARNED.add(text)
    short = text if len(text) <= 60 else text[:57] + "..."
    print(f"warning: the prompt {short!r} is {n_tokens} tokens, longer than the text encoder's {context_length} "
          f"(with start/end tokens); the end is cut off and ignored: {dropped!r}", file=sys.stderr)
    return True


class CLIPTokenizer:
    """Callable: str or list of str -> np.int32 [B, context_length]."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77):
        from tokenizers import Tokenizer, decoders
        from tokenizers.models import BPE
        for special in (SOT, EOT):
            if special not in vocab:
                raise ValueError(f"the vocabulary has no {special} token; is it a CLIP vocabulary?")
        self.sot_id, self.eot_id = vocab[SOT], vocab[EOT]
        self.pad_id = 0
        self.context_length = context_length
        self._specials = dict(zip(OPENCLIP_SPECIALS, (self.sot_id, self.eot_id)))
        self._bpe = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=EOT)
        tok = Tokenizer(self._bpe)  # only for decode()
        tok.decoder = decoders.ByteLevel()
        self._tok = tok

    def _encode(self, cleaned: str) -> tuple[list[int], list[int]]:
        """(ids, start of each id's split piece in `cleaned`) of a cleaned text."""
        ids, starts = [], []
        for m in _SPLIT.finditer(cleaned):
            piece = m.group()
            special = self._specials.get(piece)
            if special is not None:
                piece_ids = [special]
            else:  # one piece is one BPE word: "</w>" goes on its last byte
                chars = "".join(_BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))
                piece_ids = [t.id for t in self._bpe.tokenize(chars)]
            ids += piece_ids
            starts += [m.start()] * len(piece_ids)
        return ids, starts

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens and without truncation."""
        return self._encode(clean_text(text))[0]

    def truncation(self, text: str) -> Optional[str]:
        """The part of `text` (cleaned, from the first dropped token on) that does not fit the context, or None."""
        cleaned = clean_text(text)
        ids, starts = self._encode(cleaned)
        keep = self.context_length - 2  # <|startoftext|> ... <|endoftext|>
        if len(ids) <= keep:
            return None
        start = starts[keep]
        word_start = cleaned.rfind(" ", 0, start) + 1  # a word cut in the middle: name the whole word
        return cleaned[word_start:]

    def warn_if_truncated(self, text: str) -> bool:
        """Print (once per text and process) which words of `text` are cut off; True when it is cut."""
        dropped = self.truncation(text)
        if dropped is None:
            return False
        warn_truncated(text, dropped, self.context_length, len(self.encode(text)) + 2)
        return True

    def __call__(self, texts: Union[str, Iterable[str]], warn: bool = True) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.context_length:
                if warn and text not in _WARNED:
                    self.warn_if_truncated(text)
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            out[i, :len(ids)] = ids
        return out

    def decode(self, ids) -> str:
        keep = [int(i) for i in ids if int(i) not in (self.sot_id, self.eot_id, self.pad_id)]
        return self._tok.decode(keep).replace("</w>", " ").strip()


def load_tokenizer(path: str, context_length: int = 77) -> CLIPTokenizer:
    """From a folder with vocab.json + merges.txt (HF layout), or open_clip's bpe .gz file
    (a file path, or a folder holding it)."""
    files = _resolve_files(path)
    if len(files) == 2:
        with open(files[0], encoding="utf-8") as f:
            vocab = json.load(f)
        merges = _parse_merges(_read_lines(files[1]), files[1])
    else:
        merges = _parse_merges(_read_lines(files[0]), files[0])
        vocab = _vocab_from_merges(merges)
    return CLIPTokenizer(vocab, merges, context_length)


def require_tokenizer(path: Optional[str]) -> CLIPTokenizer:
    """load_tokenizer for a path a user gave: a missing path is a MissingFileError saying where to get the files."""
    if not path or not os.path.exists(path):
        raise MissingFileError(f"tokenizer files not found: {path!r}. {TOKENIZER_HINT}")
    return load_tokenizer(path)  # names a missing file inside the folder and where to get it
