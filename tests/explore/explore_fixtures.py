"""A tiny run to explore: a tiny Gemma 3 + word-level tokenizer, a jsonl corpus, and three dictionaries whose
behaviour the tests can compute by hand, indexed once per test session.

* ``detector`` (layer_0/resid_pre): latent j reads the (scaled) embedding of token ``DETECTED[j]`` with a
  threshold just below that token's own activation, so it fires exactly on that token (checked from the
  weights in the tests). Its last latent detects a token the corpus never contains: a dead latent.
* ``random-res`` (layer_1/res) and ``random-att`` (layer_1/att): random JumpReLU SAEs, checked against a
  brute-force dense computation over the same windows (the att one exercises the out-projection).

(Its tiny models come from tests/tiny_models.py, which loads tests/conftest.py by path.)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saescope.data.corpus import CorpusConfig
from saescope.explore import IndexConfig, build_index, read_dictionaries
from saescope.explore.statistics import ExampleSettings
from saescope.models.loading import load_model
from saescope.sae import AnyDictionary, DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary
from tiny_models import build_tiny_model, build_tiny_tokenizer

#: Token ids the detector's latents fire on; the corpus uses words w0..w89 (ids 4..93), so 95 never occurs.
DETECTED = (4, 10, 20, 33, 47, 60, 93, 95)
CONTEXT = 16
SETTINGS = ExampleSettings(top_k=5, intervals=8, samples_per_interval=2, histogram_bins=32, context_before=4,
                           context_after=2)  # fmt: skip
CONFIG = IndexConfig(tokens=1500, batch_windows=4, examples=SETTINGS, logit_tokens=5, neighbours=3, latent_chunk=7)


@dataclass(frozen=True)
class ExploreRun:
    run: Path
    model_dir: Path
    corpus: CorpusConfig
    index: Path


def write_dictionary(
    run: Path, name: str, sae: AnyDictionary, site: str, metrics: dict | None = None, extra_config: dict | None = None
) -> None:
    """``<run>/train/saes/<name>/`` as the trainer writes it (training-space weights, scale C = 1); a multi-layer
    dictionary adds its ``layers``, ``norm_scales`` and ``site_out`` through ``extra_config``."""
    folder = run / "train" / "saes" / name
    folder.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, folder / "sae.safetensors")
    config = {
        "format": "saescope-dictionary-v1", "name": name, "site": site, "dictionary": sae.config.to_dict(),
        "norm_scale": 1.0, "final_batch_metrics": {"l0": 3.0}, **(extra_config or {}),
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def detector_sae(model: torch.nn.Module) -> SparseDictionary:
    """Latent j: w_j = e_j / |e_j| (e_j the scaled embedding of DETECTED[j]), threshold 0.999 · |e_j|."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        e_FD = embed(torch.tensor(DETECTED)).float()
    d = e_FD.shape[1]
    config = DictionaryConfig(d_in=d, width=len(DETECTED), apply_pre_encoder_bias=False)
    sae = build_dictionary(config)
    assert isinstance(sae, JumpReLU)
    norms = e_FD.norm(dim=1)
    with torch.no_grad():
        sae.W_enc_DF.copy_((e_FD / norms[:, None]).T)
        sae.b_enc_F.zero_()
        sae.W_dec_FD.copy_(e_FD / norms[:, None])
    sae.set_threshold_(0.999 * norms)
    return sae.eval()


def random_sae(d: int, width: int, seed: int) -> SparseDictionary:
    generator = torch.Generator().manual_seed(seed)
    sae = build_dictionary(DictionaryConfig(d_in=d, width=width), generator=generator)
    assert isinstance(sae, JumpReLU)
    with torch.no_grad():
        sae.W_enc_DF.mul_(4.0)
        sae.b_enc_F.copy_(0.1 * torch.randn(width, generator=generator))
    sae.set_threshold_(0.05 + 0.1 * torch.rand(width, generator=generator))
    return sae.eval()


def metrics(name: str, site: str, width: int) -> dict:
    return {
        "format": "saescope-metrics-v1", "name": name, "site": site, "architecture": "jumprelu", "width": width,
        "reconstruction": {"l0": 3.5, "fvu": 0.25, "dead_fraction": 0.0, "n_tokens": 1000},
        "lm_loss": {"delta_lm_loss": 0.1, "loss_recovered": 0.8},
    }  # fmt: skip


def make_run(root: Path) -> ExploreRun:
    model_dir = root / "tiny-gemma3"
    model = build_tiny_model("gemma3")
    model.save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)
    rng = random.Random(3)
    corpus_path = root / "docs.jsonl"
    lines = [json.dumps({"text": " ".join(f"w{rng.randrange(90)}" for _ in range(30))}) for _ in range(3000)]
    corpus_path.write_text("\n".join(lines) + "\n")
    run = root / "run"
    write_dictionary(run, "detector", detector_sae(model), "layer_0/resid_pre")
    write_dictionary(run, "random-res", random_sae(32, 24, 1), "layer_1/res", metrics("random-res", "layer_1/res", 24))
    write_dictionary(run, "random-att", random_sae(64, 16, 2), "layer_1/att", metrics("random-att", "layer_1/att", 16))
    (run / "run_config.json").write_text(
        json.dumps({"model": str(model_dir), "corpus": str(corpus_path), "context_size": CONTEXT, "sites": "all"})
    )
    report = run / "report"
    report.mkdir()
    (report / "fidelity_vs_l0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    corpus = CorpusConfig(source=str(corpus_path), context_size=CONTEXT)
    loaded = load_model(str(model_dir))
    found = read_dictionaries(run)
    index = run / "index.sqlite"
    build_index(
        loaded, found.dictionaries, corpus, CONFIG, index, model_name=str(model_dir),
        source={"kind": found.kind, "path": str(run)}, report_dir=found.report_dir, progress=False,
    )  # fmt: skip
    return ExploreRun(run, model_dir, corpus, index)


_SHARED: list[ExploreRun] = []


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    """The run of :func:`make_run`, built once per test session (test modules wrap it in a fixture)."""
    if not _SHARED:
        _SHARED.append(make_run(tmp_path_factory.mktemp("explore")))
    return _SHARED[0]
