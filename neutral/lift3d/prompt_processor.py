"""Prompt processing: text embeddings for the prompt and the negative prompt, cached on disk.

The embeddings are computed once per (text encoder, tokenizer, text) and stored as
`<cache_dir>/<sha256(model identity + text)>.npy`; a later run with the same checkpoint and text
loads them without building the text encoder at all (mindone's cache never hit). The model
identity is the converted checkpoint's path, size and mtime, the model YAML's content and a hash of
the tokenizer files' contents (other tokenizer files give other token ids, so other embeddings), or,
for a text encoder handed over in memory, the identity its caller gives (e.g. a content hash of its weights).
The tokenizer files are read on every run, cached prompt or not: a missing tokenizer is an error either way,
and a prompt longer than the text encoder's 77 tokens is reported once, naming the words cut off.

The output is numpy (host side): the training step receives the (2B, 77, C) [cond x B, uncond x B]
array as a tensor input, so nothing here runs inside the compiled graph. The frozen text encoder lives
only inside the encode function (never an attribute of a system Cell), so no training checkpoint or
optimizer ever sees its parameters; it is built only when some text misses the cache.
Twin: torch_ref/lift3d/prompt_processors/prompt_processor.py (same cache, torch text encoder).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from neutral.config import parse_structured
from neutral.errors import UserError
from neutral.files import write_atomically

DEFAULT_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
    "dehydrated, bad proportions")

EncodeFn = Callable[[list], np.ndarray]  # list of N texts -> (N, 77, C) float32


@dataclass
class Config:
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    model_name: str = "sd-v2.1-base-4view"
    ckpt_path: Optional[str] = None  # converted MVDream checkpoint (holds the text encoder; checkpoint_layout.py)
    config_path: Optional[str] = None  # original model YAML; default from model_name
    tokenizer_path: Optional[str] = None  # folder with the CLIP BPE files (vocab.json, merges.txt)
    cache_dir: str = ".cache/text_embeddings"
    use_cache: bool = True
    view_dependent_prompting: bool = False
    front_threshold: float = 45.0  # degrees of azimuth either side of the front
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0  # degrees of elevation


class PromptError(UserError, ValueError):
    """A prompt or prompt-processor config problem found before any work starts."""


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"the prompt is empty ({prompt!r}): pass system.prompt_processor.prompt=\"a red cube\"")
    return prompt.strip()


# ---------------------------------------------------------------- cache keys

def file_identity(path: str) -> str:
    """Cheap identity of a (large) file without reading it: real path, size and mtime."""
    st = os.stat(path)
    return f"file:{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def content_identity(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def weights_fingerprint(named_arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """Content hash of a model's weights (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, arr in sorted(named_arrays, key=lambda kv: kv[0]):
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.shape}|{arr.dtype}".encode())
        h.update(arr.tobytes())
    return "weights:" + h.hexdigest()


def cache_key(model_identity: str, text: str) -> str:
    return hashlib.sha256(f"{model_identity}\n{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """One .npy file per (model identity, text); writes are atomic (temp file + rename)."""

    def __init__(self, cache_dir: str, model_identity: str):
        self.cache_dir = cache_dir
        self.model_identity = model_identity

    def path(self, text: str) -> str:
        return os.path.join(self.cache_dir, cache_key(self.model_identity, text) + ".npy")

    def load(self, text: str) -> Optional[np.ndarray]:
        p = self.path(text)
        return np.load(p) if os.path.isfile(p) else None

    def save(self, text: str, emb: np.ndarray) -> None:
        write_atomically(self.path(text), lambda f: np.save(f, np.asarray(emb, dtype=np.float32)))


# ---------------------------------------------------------------- view-dependent prompting

@dataclass(frozen=True)
class Direction:
    name: str
    suffix: str


DIRECTIONS = (Direction("side", ", side view"), Direction("front", ", front view"),
              Direction("back", ", back view"), Direction("overhead", ", overhead view"))


def shift_azimuth_deg(azimuth: np.ndarray) -> np.ndarray:
    """Azimuth in degrees wrapped to [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


def direction_index(elevation, azimuth, cfg: Config) -> np.ndarray:
    """threestudio's rule: side by default, then front, back, overhead (later ones win)."""
    ele, azi = np.asarray(elevation, np.float64), shift_azimuth_deg(np.asarray(azimuth, np.float64))
    idx = np.zeros(ele.shape, dtype=np.int64)
    idx[(azi > -cfg.front_threshold) & (azi < cfg.front_threshold)] = 1
    idx[(azi > 180 - cfg.back_threshold) | (azi < -180 + cfg.back_threshold)] = 2
    idx[ele > cfg.overhead_threshold] = 3
    return idx


# ---------------------------------------------------------------- output

@dataclass
class PromptProcessorOutput:
    text_embeddings: np.ndarray  # (1, 77, C)
    uncond_text_embeddings: np.ndarray  # (1, 77, C)
    text_embeddings_vd: np.ndarray  # (4, 77, C), DIRECTIONS order
    uncond_text_embeddings_vd: np.ndarray  # (4, 77, C)
    cfg: Config

    def get_text_embeddings(self, elevation, azimuth, camera_distances=None,
                            view_dependent_prompting: bool = False) -> np.ndarray:
        """(2B, 77, C): B conditional then B unconditional embeddings (the guidance's order)."""
        b = int(np.asarray(elevation).shape[0])
        if view_dependent_prompting:
            idx = direction_index(elevation, azimuth, self.cfg)
            cond, uncond = self.text_embeddings_vd[idx], self.uncond_text_embeddings_vd[idx]
        else:
            cond = np.repeat(self.text_embeddings, b, axis=0)
            uncond = np.repeat(self.uncond_text_embeddings, b, axis=0)
        return np.concatenate([cond, uncond], axis=0).astype(np.float32)


# ---------------------------------------------------------------- processor

class PromptProcessor:
    """Text embeddings for cfg.prompt / cfg.negative_prompt (and the view-dependent variants).

    `encode_fn` + `model_identity` inject a text encoder (tests, notebooks); otherwise the text
    encoder is loaded from cfg.ckpt_path, and only when some text is not in the cache.
    """

    Config = Config

    def __init__(self, cfg, encode_fn: Optional[EncodeFn] = None, model_identity: Optional[str] = None):
        self.cfg = parse_structured(Config, cfg, "prompt_processor")
        self.prompt = check_prompt(self.cfg.prompt)
        self.negative_prompt = self.cfg.negative_prompt.strip() if self.cfg.negative_prompt else ""
        self._encode_fn = encode_fn
        self._injected = encode_fn is not None
        if encode_fn is not None:
            if model_identity is None:
                raise PromptError("an injected encode_fn needs a model_identity "
                                  "(e.g. weights_fingerprint of the text encoder) to key the cache")
            self.model_identity = model_identity
            self.tokenizer = None
        else:
            self.ckpt_path, self.config_path = self._check_files()
            self.tokenizer, tokenizer_id = self._load_tokenizer()
            self.model_identity = (file_identity(self.ckpt_path) + "|config:"
                                   + content_identity(self.config_path) + "|" + tokenizer_id)
            self._warn_truncation()
        self.cache = EmbeddingCache(self.cfg.cache_dir, self.model_identity)
        self.encoder_calls = 0  # number of texts actually run through the text encoder

    def missing_texts(self) -> list[str]:
        """Texts the cache cannot serve (all of them with use_cache off)."""
        prompts, negatives = self.texts()
        texts = list(dict.fromkeys(prompts + negatives))
        if not self.cfg.use_cache:
            return texts
        return [t for t in texts if not os.path.isfile(self.cache.path(t))]

    def _load_tokenizer(self):
        """(tokenizer, identity of its files), read on every run; a missing or broken tokenizer is a PromptError."""
        from neutral.mvdream.tokenizer import TOKENIZER_HINT, load_tokenizer, tokenizer_identity
        path = self.cfg.tokenizer_path
        if not path or not os.path.exists(path):
            raise PromptError(f"tokenizer files not found: system.prompt_processor.tokenizer_path={path!r}. "
                              f"{TOKENIZER_HINT}")
        try:
            return load_tokenizer(path), tokenizer_identity(path)
        except (OSError, ValueError) as exc:  # files missing in the folder, not BPE files, bad JSON
            raise PromptError(f"system.prompt_processor.tokenizer_path={path!r}: {str(exc).splitlines()[0]}") from None

    def _warn_truncation(self) -> None:
        """Once per text: the prompt / negative prompt words beyond the text encoder's context are named.
        A view-dependent variant is reported only when its base prompt fits (then only the suffix is cut)."""
        prompts, negatives = self.texts()
        base_cut = self.tokenizer.warn_if_truncated(self.prompt)
        for text in prompts[1:]:
            if not base_cut:
                self.tokenizer.warn_if_truncated(text)
        if self.negative_prompt:
            self.tokenizer.warn_if_truncated(self.negative_prompt)

    def _check_files(self) -> tuple[str, str]:
        from neutral.lift3d.multiview_diffusion_guidance import (
            Config as GuidanceConfig, check_checkpoint)
        gcfg = GuidanceConfig(model_name=self.cfg.model_name, ckpt_path=self.cfg.ckpt_path,
                              config_path=self.cfg.config_path)
        return check_checkpoint(gcfg)

    def texts(self) -> tuple[list[str], list[str]]:
        """(prompts, negative prompts): [prompt] + view-dependent ones when enabled."""
        prompts, negatives = [self.prompt], [self.negative_prompt]
        if self.cfg.view_dependent_prompting:
            prompts += [self.prompt + d.suffix for d in DIRECTIONS]
            negatives += [self.negative_prompt] * len(DIRECTIONS)
        return prompts, negatives

    def load_encode_fn(self) -> EncodeFn:
        """The frozen text encoder of a framework tree, built from self.ckpt_path / self.config_path with
        self.tokenizer; the MindSpore and torch_ref processors implement it."""
        raise PromptError(f"{type(self).__name__} has no text encoder of its own: pass encode_fn and model_identity")

    def _encoder(self) -> EncodeFn:
        if self._encode_fn is None:
            self._encode_fn = self.load_encode_fn()
        return self._encode_fn

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 77, C) for the texts: cached ones from disk, the rest through the encoder in one batch."""
        unique = list(dict.fromkeys(texts))
        found = {t: self.cache.load(t) for t in unique} if self.cfg.use_cache else {t: None for t in unique}
        missing = [t for t, e in found.items() if e is None]
        if missing:
            new = np.asarray(self._encoder()(missing), dtype=np.float32)
            self.encoder_calls += len(missing)
            if not self._injected:
                self._encode_fn = None  # the loaded text tower (1.4 GB at full size) is freed; a later miss reloads it
            for t, e in zip(missing, new):
                found[t] = e
                if self.cfg.use_cache:
                    self.cache.save(t, e)
        return np.stack([found[t] for t in texts], 0)

    def __call__(self) -> PromptProcessorOutput:
        prompts, negatives = self.texts()
        embs = self.embeddings(prompts + negatives)
        cond, uncond = embs[:len(prompts)], embs[len(prompts):]
        vd, uvd = (cond[1:], uncond[1:]) if self.cfg.view_dependent_prompting else (
            np.repeat(cond[:1], len(DIRECTIONS), 0), np.repeat(uncond[:1], len(DIRECTIONS), 0))
        return PromptProcessorOutput(cond[:1], uncond[:1], vd, uvd, self.cfg)
