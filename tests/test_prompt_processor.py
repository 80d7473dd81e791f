"""Prompt processor: embeddings through tokenizer + text encoder, the on-disk cache really hits,
bad prompts fail early, view-dependent selection, and torch_ref vs MindSpore embeddings."""
import json
import os

import numpy as np
import pytest

from convert.pt2ms import convert_state_dict
from mindspore_impl.core.checkpoint import load_state_dict
from neutral.registry import find
from mindspore_impl.lift3d.prompt_processors import prompt_processor as pp
from neutral.lift3d import prompt_processor as npp
from mindspore_impl.mvdream import text_encoder as ms_text
from neutral.mvdream.tokenizer import load_tokenizer
from tests.parity import assert_parity, torch_module
from tests.test_tokenizer import MERGES, open_clip_vocab
from tests.tiny_mvdream_models import PREFIXES, TINY_CONFIG, tiny_params, torch_state, write_tiny_checkpoint
from torch_ref.lift3d.prompt_processors import prompt_processor as tpp

PROMPT = "a cat, 3d asset"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    (d / "vocab.json").write_text(json.dumps(open_clip_vocab()), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n",
                                  encoding="utf-8")
    return str(d)


@pytest.fixture(scope="module")
def encoders(tokenizer_dir):
    """(MindSpore encode_fn, torch encode_fn, model identity) for one tiny random text encoder."""
    mp = tiny_params()
    state, modules = torch_state(("text_encoder",), seed=5, model_params=mp)
    converted = convert_state_dict(state, mp, parts=["text_encoder"], log=lambda *_: None)
    m = ms_text.build_from_config(dict(mp["cond_stage_config"]["params"]))
    load_state_dict(m, converted, prefix=PREFIXES["text_encoder"])
    tok = load_tokenizer(tokenizer_dir)
    ident = npp.weights_fingerprint((p.name, p.asnumpy()) for p in m.get_parameters())
    return pp.make_encode_fn(tok, m), tpp.make_encode_fn(tok, torch_module(modules["text_encoder"])), ident


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.texts = fn, 0, 0

    def __call__(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return self.fn(texts)


def test_second_run_hits_the_cache(encoders, tmp_path):
    ms_fn, _, ident = encoders
    cfg = {"prompt": PROMPT, "cache_dir": str(tmp_path / "cache")}
    first = Counting(ms_fn)
    out1 = pp.PromptProcessor(cfg, first, ident)()
    assert (first.calls, first.texts) == (1, 2)  # prompt and negative prompt, one batch
    assert len(os.listdir(tmp_path / "cache")) == 2
    second = Counting(ms_fn)  # a new run: a new processor on the same cache folder
    out2 = pp.PromptProcessor(cfg, second, ident)()
    assert second.calls == 0
    np.testing.assert_array_equal(out1.text_embeddings, out2.text_embeddings)
    np.testing.assert_array_equal(out1.uncond_text_embeddings, out2.uncond_text_embeddings)
    # another model or another text misses
    third = Counting(ms_fn)
    pp.PromptProcessor(cfg, third, ident + "-other")()
    assert third.texts == 2
    fourth = Counting(ms_fn)
    pp.PromptProcessor(dict(cfg, prompt="a dog"), fourth, ident)()
    assert fourth.texts == 1  # the negative prompt is cached already


def test_output_layout_and_default_negative_prompt(encoders, tmp_path):
    ms_fn, _, ident = encoders
    proc = pp.PromptProcessor({"prompt": PROMPT, "cache_dir": str(tmp_path)}, ms_fn, ident)
    assert proc.negative_prompt.startswith("ugly, bad anatomy, blurry") and "bad proportions" in proc.negative_prompt
    out = proc()
    emb = out.get_text_embeddings(np.zeros(8), np.zeros(8), np.ones(8))
    assert emb.shape == (16, 77, 32) and emb.dtype == np.float32
    direct = ms_fn([PROMPT, npp.DEFAULT_NEGATIVE_PROMPT])
    assert_parity(emb[:8], np.repeat(direct[:1], 8, 0), "cond half", rel=1e-6)
    assert_parity(emb[8:], np.repeat(direct[1:], 8, 0), "uncond half", rel=1e-6)


def test_torch_ref_embeddings_match(encoders, tmp_path):
    ms_fn, t_fn, ident = encoders
    cfg = {"prompt": PROMPT, "use_cache": False, "cache_dir": str(tmp_path)}
    a = pp.PromptProcessor(cfg, ms_fn, ident)()
    b = tpp.PromptProcessor(cfg, t_fn, ident)()
    assert_parity(a.text_embeddings, b.text_embeddings, "prompt embedding")
    assert_parity(a.uncond_text_embeddings, b.uncond_text_embeddings, "negative prompt embedding")
    assert not os.listdir(tmp_path)  # use_cache false writes nothing


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_error(prompt, tmp_path):
    with pytest.raises(npp.PromptError, match="prompt is empty"):
        pp.PromptProcessor({"prompt": prompt, "cache_dir": str(tmp_path)}, lambda t: None, "x")
    with pytest.raises(npp.PromptError, match="prompt is empty"):
        pp.PromptProcessor({"cache_dir": str(tmp_path)}, lambda t: None, "x")


def test_view_dependent_prompting(encoders, tmp_path):
    ms_fn, _, ident = encoders
    counting = Counting(ms_fn)
    cfg = {"prompt": PROMPT, "cache_dir": str(tmp_path), "view_dependent_prompting": True}
    out = pp.PromptProcessor(cfg, counting, ident)()
    assert counting.texts == 6  # prompt, 4 directional prompts, one negative prompt
    ele = np.array([0.0, 0.0, 0.0, 70.0])
    azi = np.array([10.0, 90.0, 180.0, 0.0])  # front, side, back, overhead (elevation wins)
    assert npp.direction_index(ele, azi, out.cfg).tolist() == [1, 0, 2, 3]
    emb = out.get_text_embeddings(ele, azi, None, view_dependent_prompting=True)
    expected = ms_fn([PROMPT + ", front view", PROMPT + ", side view", PROMPT + ", back view",
                      PROMPT + ", overhead view"])
    assert_parity(emb[:4], expected, "view-dependent cond embeddings", rel=1e-6)


def test_loads_text_encoder_from_checkpoint_only_on_a_miss(tokenizer_dir, tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    write_tiny_checkpoint(ckpt, seed=3)
    cfg = {"prompt": PROMPT, "ckpt_path": ckpt, "config_path": TINY_CONFIG, "tokenizer_path": tokenizer_dir,
           "cache_dir": str(tmp_path / "cache")}
    first = find("mvdream-prompt-processor")(cfg)
    out1 = first()
    assert first.encoder_calls == 2 and out1.text_embeddings.shape == (1, 77, 32)
    assert first._encode_fn is None  # the loaded text tower is freed once the texts are encoded
    second = pp.PromptProcessor(cfg)
    out2 = second()
    assert second.encoder_calls == 0 and second._encode_fn is None  # text encoder never built
    np.testing.assert_array_equal(out1.text_embeddings, out2.text_embeddings)
    # a rewritten checkpoint (new mtime/size identity) misses
    os.utime(ckpt, ns=(os.stat(ckpt).st_atime_ns, os.stat(ckpt).st_mtime_ns + 10 ** 9))
    third = pp.PromptProcessor(cfg)
    third()
    assert third.encoder_calls == 2
    # a text the cache misses later (another prompt) reloads the freed tower
    third.cfg.prompt = third.prompt = PROMPT + ", side view"
    np.testing.assert_array_equal(third().text_embeddings, pp.PromptProcessor({**cfg, "prompt": third.prompt})()
                                  .text_embeddings)
    assert third.encoder_calls == 3


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError) as exc:
        pp.PromptProcessor({"prompt": PROMPT, "ckpt_path": missing, "cache_dir": str(tmp_path)})
    assert missing in str(exc.value) and "convert.pt2ms" in str(exc.value)


def test_missing_tokenizer_is_reported_before_any_work(tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    open(ckpt, "wb").close()  # exists: the tokenizer check comes first, nothing is loaded
    with pytest.raises(npp.PromptError, match="tokenizer files not found") as exc:
        pp.PromptProcessor({"prompt": PROMPT, "ckpt_path": ckpt, "config_path": TINY_CONFIG,
                            "tokenizer_path": str(tmp_path / "nowhere"), "cache_dir": str(tmp_path / "c")})
    assert "stable-diffusion-2-1-base" in str(exc.value)
