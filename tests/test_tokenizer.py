"""CLIP BPE tokenizer from local files: exact ids on a tiny hand-made vocabulary (no downloads),
padding / truncation, both file layouts, and the missing-file errors."""
import gzip
import json
import os

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
