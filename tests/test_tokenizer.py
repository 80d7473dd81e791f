"""CLIP BPE tokenizer from local files: exact ids on a tiny hand-made vocabulary (no downloads),
padding / truncation, both file layouts, the missing-file errors, and the ids of open_clip's own tokenizer
for 67 varied prompts (curly quotes, mojibake, full-width letters, HTML entities, odd whitespace, accents,
emoji, CJK, long and empty texts).

The open_clip ids are pinned in tests/fixtures/tokenizer_openclip_ids.json, with the part of open_clip's
vocabulary they use in tests/fixtures/tokenizer_openclip_vocab/, both written once by open_clip 2.7.0
(MVDream's pin) with tests/fixtures/tokenizer_openclip_make.py; its docstring says how to regenerate them.
So that comparison runs everywhere. Where open_clip is installed (`pip install --no-deps open_clip_torch`),
test_same_ids_as_live_open_clip also compares against it directly, on its full vocabulary.
"""
import gzip
import importlib.util
import json
import os
import random

import numpy as np
import pytest

from neutral.mvdream.tokenizer import EOT, SOT, load_tokenizer

# A few CLIP-style merges; the rest of every word falls back to single byte tokens.
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"), ("c", "a"), ("ca", "t</w>")]


def byte_id(ch: str, end_of_word: bool = False) -> int:
    """Id of a printable ASCII byte token: CLIP's byte table starts at '!' (id 0); '</w>' adds 256."""
    return ord(ch) - ord("!") + (256 if end_of_word else 0)


HELLO, CAT = 512 + 3, 512 + 5  # merge tokens follow the 512 byte tokens, in merge order
SOT_ID, EOT_ID = 512 + len(MERGES), 512 + len(MERGES) + 1


def open_clip_vocab() -> dict:
    from neutral.mvdream.tokenizer import bytes_to_unicode
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in MERGES] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_tokenizer")
    (d / "vocab.json").write_text(json.dumps(open_clip_vocab()), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n",
                                  encoding="utf-8")
    return str(d)


@pytest.fixture(scope="module")
def gz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("openclip_bpe") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    return str(path)


CASES = {
    "Hello  World!": [HELLO] + [byte_id(c) for c in "worl"] + [byte_id("d", True), byte_id("!", True)],
    "a CAT\n\tand 3d": [byte_id("a", True), CAT, byte_id("a"), byte_id("n"), byte_id("d", True),
                        byte_id("3", True), byte_id("d", True)],
    "cats &amp; hello": [CAT - 1, byte_id("t"), byte_id("s", True), byte_id("&", True), HELLO],
}


@pytest.mark.parametrize("text", list(CASES))
def test_exact_ids(hf_dir, text):
    ids = load_tokenizer(hf_dir)([text])
    expected = [SOT_ID] + CASES[text] + [EOT_ID]
    print(f"[tokenizer] {text!r} -> {ids[0, :len(expected) + 1].tolist()}")
    assert ids.dtype == np.int32 and ids.shape == (1, 77)
    assert ids[0, :len(expected)].tolist() == expected
    assert (ids[0, len(expected):] == 0).all()


def test_openclip_gz_gives_the_same_ids(hf_dir, gz_file):
    texts = list(CASES) + ["", "a" * 10]
    a = load_tokenizer(hf_dir)(texts)
    b = load_tokenizer(gz_file)(texts)
    c = load_tokenizer(os.path.dirname(gz_file))(texts)  # a folder holding only the .gz
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert a[3, :2].tolist() == [SOT_ID, EOT_ID] and (a[3, 2:] == 0).all()


def test_truncation_keeps_eot_last(hf_dir):
    tok = load_tokenizer(hf_dir)
    ids = tok(["a " * 100, "cat"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == SOT_ID and ids[0, 76] == EOT_ID
    assert (ids[0, 1:76] == byte_id("a", True)).all()
    assert ids[1, :3].tolist() == [SOT_ID, CAT, EOT_ID] and (ids[1, 3:] == 0).all()
    # exactly 75 text tokens fit without cutting
    ids = tok("a " * 75)
    assert ids[0, 75] == byte_id("a", True) and ids[0, 76] == EOT_ID


def test_decode_round_trip(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert tok.decode(tok("Hello  World!")[0]) == "hello world !"


def test_missing_files_name_the_file_and_the_source(tmp_path):
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as exc:
        load_tokenizer(str(tmp_path))
    msg = str(exc.value)
    assert f"missing in {tmp_path}: merges.txt (" in msg  # vocab.json is there, so not listed
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "bpe_simple_vocab_16e6.txt.gz" in msg
    with pytest.raises(FileNotFoundError, match="tokenizer path not found: .*nowhere"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_vocabulary_without_clip_specials_is_refused(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a</w>": 0}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no <\|startoftext\|> token"):
        load_tokenizer(str(tmp_path))


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SOT_ID_CLIP, EOT_ID_CLIP = 49406, 49407  # open_clip's <start_of_text>, <end_of_text>


def _pinned_cases() -> list[dict]:
    with open(os.path.join(FIXTURES, "tokenizer_openclip_ids.json"), encoding="utf-8") as f:
        return json.load(f)["cases"]


def _padded(ids: list[int], context_length: int = 77) -> list[int]:
    return ids + [0] * (context_length - len(ids))


def test_same_ids_as_open_clip_pinned():
    cases = _pinned_cases()
    assert len(cases) >= 40
    tok = load_tokenizer(os.path.join(FIXTURES, "tokenizer_openclip_vocab"))
    ours = tok([c["text"] for c in cases], warn=False)
    differ = [c["text"] for c, row in zip(cases, ours) if row.tolist() != _padded(c["ids"])]
    print(f"[tokenizer] {len(cases) - len(differ)}/{len(cases)} prompts give open_clip's ids")
    assert not differ, f"{len(differ)} of {len(cases)} prompts give other ids than open_clip: {differ!r}"
    # the cases really cover cutting at 77 (<|endoftext|> last) and the empty text
    assert sum(len(c["ids"]) == 77 and c["ids"][-1] == EOT_ID_CLIP for c in cases) >= 4
    assert [SOT_ID_CLIP, EOT_ID_CLIP] in [c["ids"] for c in cases]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Seeded texts mixing the character kinds cleaning and splitting treat differently."""
    rng = random.Random(seed)
    pools = ["abcxyz ABC", "0123456789", " \t\n\u00a0\u3000\u200b", "'\"!?.,-_<>|&;#:()[]{}",
             "\u2019\u201c\u201d\u00e9\u00c3\u00a9\u00e2\u20ac\u2122", "\uff43\uff41\uff54\ufb01",
             "\u4e00\u732b\u306e\ud55c", "\U0001f436\u200d\U0001f680\ufe0f", "&amp;&lt;&#39;&quot;&nbsp;&#x263a;",
             "\u017f\u212a\u0345\u0130\u03a3\u00df", "<start_of_text><end_of_text><|endoftext|>",
             "'s 're 'll 'd 'm 've 't", "\x00\x07\x1c\x1f\x7f\x85\ufeff"]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 14)):
            if rng.random() < 0.15:  # any character of the first three planes
                parts.append("".join(chr(rng.choice([rng.randint(0x20, 0xd7ff), rng.randint(0xe000, 0x2ffff)]))
                                     for _ in range(rng.randint(1, 3))))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        texts.append("".join(parts))
    return texts


def _live_open_clip():
    """open_clip's tokenizer module, loaded by file path: `import open_clip` runs its __init__.py, which
    imports torchvision (not a dependency here). Skips when open_clip or what its tokenizer imports is missing."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed (optional: pip install --no-deps open_clip_torch); "
                    "test_same_ids_as_open_clip_pinned compares against its pinned ids instead")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    mod_spec = importlib.util.spec_from_file_location("open_clip_tokenizer_live", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        pytest.skip(f"open_clip's tokenizer cannot be imported here: {exc}")
    return module


def test_same_ids_as_live_open_clip():
    oc = _live_open_clip()
    bpe = os.path.join(os.path.dirname(oc.__file__), "bpe_simple_vocab_16e6.txt.gz")
    tok = load_tokenizer(bpe)  # the very vocabulary open_clip reads
    texts = [c["text"] for c in _pinned_cases()] + _random_texts(400)
    ours = tok(texts, warn=False)
    ref = oc.tokenize(texts, context_length=77).numpy()
    differ = [t for t, a, b in zip(texts, ours, ref) if a.tolist() != b.tolist()]
    print(f"[tokenizer] {len(texts) - len(differ)}/{len(texts)} texts give open_clip's ids (live)")
    assert not differ, f"{len(differ)} of {len(texts)} texts give other ids than open_clip: {differ[:5]!r}"
