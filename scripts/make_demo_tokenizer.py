"""A tiny CLIP BPE vocabulary (vocab.json + merges.txt) for the demo model: every caption word is one token.

    python scripts/make_demo_tokenizer.py                    # -> pretrained/demo/tokenizer/

Layout of the vocabulary (the HF CLIP layout the project's tokenizer reads): the 256 byte tokens, the same
with the end-of-word suffix "</w>", one token per merge, then <|startoftext|> and <|endoftext|>. The merges
build each word of WORDS left to right (prefix + next character), so "red" -> ["red</w>"]; any other text
still tokenises, falling back to shorter pieces and single bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join("pretrained", "demo", "tokenizer")
# the primitives dataset's caption words (mindspore_impl/mvdream/data/primitives.py) and prompt glue
WORDS = ("a", "an", "the", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "gray",
         "grey", "black", "white", "cube", "sphere", "cylinder", "cone", "torus", "capsule", "pyramid",
         "ball", "box", "ring", "asset", "object", "of", "and")


def _bpe(word: str, ranks: dict) -> list[str]:
    """CLIP's BPE of one pre-token: repeatedly merge the adjacent pair of lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_merges(words) -> list[tuple[str, str]]:
    """Merges under which every word (with its end-of-word suffix) is one token: append the merge of the
    first two pieces a word still splits into, until no word splits (new merges rank last)."""
    merges: list[tuple[str, str]] = []
    ranks: dict = {}
    for _ in range(sum(len(w) for w in words) + 1):
        changed = False
        for w in words:
            pieces = _bpe(w, ranks)
            if len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                changed = True
        if not changed:
            return merges
    raise RuntimeError("could not build single-token merges for every word")


def write_tokenizer(folder: str = DEFAULT_OUT, words=WORDS) -> str:
    from neutral.mvdream.tokenizer import EOT, SOT, bytes_to_unicode
    words = [w.lower() for w in words]
    merges = word_merges(words)
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [SOT, EOT]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def vocab_size(folder: str) -> int:
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        return len(json.load(f))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    folder = write_tokenizer(args.out)
    from neutral.mvdream.tokenizer import load_tokenizer
    tok = load_tokenizer(folder)
    split = [w for w in WORDS if len(tok.encode(w)) != 1]
    print(f"wrote {folder}: vocabulary of {vocab_size(folder)} tokens; words not single tokens: {split or 'none'}")
    return 0


if __name__ == "__main__":
    from neutral.errors import run_cli
    run_cli(main)
