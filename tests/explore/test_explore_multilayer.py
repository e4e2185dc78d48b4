"""A cross-layer transcoder in the explorer: each block is browsable, and its latents' pages say how strongly
they write each output site (their own layer and every later one, never an earlier one).

A 3-layer CLT over the tiny model's ``mlp_in -> mlp`` (non-zero cross decoders, per-layer norm scales, so the
raw-space decoders the index must measure differ from the trained ones) next to one plain SAE, indexed on a
few hundred tokens of the shared explore run's model and corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from explore_fixtures import ExploreRun, random_sae, shared_run, write_dictionary
from fastapi.testclient import TestClient

from saescope.explore import IndexConfig, IndexReader, build_index, read_dictionaries
from saescope.explore.export import write_static_site
from saescope.explore.server import create_app
from saescope.explore.statistics import ExampleSettings
from saescope.explore.weights import write_norms
from saescope.models.loading import load_model
from saescope.release import read_suite
from saescope.sae import CrossLayerDictionary, DictionaryConfig, build_any_dictionary

D, WIDTH, LAYERS = 32, 12, (0, 1, 2)
SCALES = (2.0, 3.0, 5.0)
SMALL = IndexConfig(
    tokens=300, batch_windows=4, logit_tokens=3, neighbours=2, latent_chunk=5,
    examples=ExampleSettings(top_k=2, intervals=4, samples_per_interval=1, histogram_bins=16),
)  # fmt: skip


@dataclass(frozen=True)
class CltRun:
    run: Path
    index: Path
    clt: CrossLayerDictionary
    """The CLT in raw activation space, as the explorer reads it (norm scales folded in)."""


def random_clt(seed: int) -> CrossLayerDictionary:
    """A trained-looking CLT: non-zero cross decoders and biases, thresholds the tiny model's inputs cross."""
    generator = torch.Generator().manual_seed(seed)
    config = DictionaryConfig(d_in=D, width=WIDTH, d_out=D, architecture="jumprelu", n_layers=len(LAYERS),
                              apply_pre_encoder_bias=False, sparsity="l0")  # fmt: skip
    sae = build_any_dictionary(config, generator=generator)
    assert isinstance(sae, CrossLayerDictionary)
    with torch.no_grad():
        for cross in sae.W_cross:
            cross.copy_(0.3 * torch.randn(cross.shape, generator=generator))
        for i in range(len(LAYERS)):
            block = sae.block(i)
            block.b_enc_F.copy_(0.1 * torch.randn(WIDTH, generator=generator))
            block.W_enc_DF.mul_(4.0)
            block.set_threshold_(0.05 + 0.1 * torch.rand(WIDTH, generator=generator))
    return sae.eval()


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def clt_run(explore_run: ExploreRun, tmp_path_factory: pytest.TempPathFactory) -> CltRun:
    run = tmp_path_factory.mktemp("clt") / "run"
    extra = {"site_out": "layer_0/mlp", "layers": list(LAYERS), "norm_scales": list(SCALES)}
    write_dictionary(run, "clt", random_clt(5), "layer_0/mlp_in", extra_config=extra)
    write_dictionary(run, "res", random_sae(D, WIDTH, 6), "layer_1/res")
    found = read_dictionaries(run)
    index = run / "index.sqlite"
    build_index(
        load_model(str(explore_run.model_dir)), found.dictionaries, explore_run.corpus, SMALL, index,
        model_name=str(explore_run.model_dir), source={"kind": found.kind, "path": str(run)}, progress=False,
    )  # fmt: skip
    (entry,) = [e for e in read_suite(run / "train") if e.name == "clt"]
    clt = entry.raw_space()
    assert isinstance(clt, CrossLayerDictionary)
    return CltRun(run, index, clt)


@pytest.fixture(scope="module")
def client(clt_run: CltRun) -> Iterator[TestClient]:
    with TestClient(create_app(clt_run.index), raise_server_exceptions=False) as test_client:
        yield test_client


def block_name(i: int) -> str:
    return f"clt.layer_{LAYERS[i]}"


def test_each_block_stores_its_decoder_norm_at_its_own_and_every_later_layer(clt_run: CltRun) -> None:
    reader = IndexReader(clt_run.index)
    assert [s.name for s in reader.saes] == [block_name(0), block_name(1), block_name(2), "res"]
    for i in range(len(LAYERS)):
        sae = reader.sae(block_name(i))
        assert sae is not None
        assert sae.parent == "clt"
        assert sae.write_sites == tuple(f"layer_{LAYERS[j]}/mlp" for j in range(i, len(LAYERS)))  # none earlier
        expected_FS = torch.stack([clt_run.clt.decoder_to(i, j).detach().norm(dim=1) for j in range(i, len(LAYERS))], 1)
        for latent in range(WIDTH):
            feature = reader.feature(sae, latent)
            assert feature is not None
            assert feature["parent"] == "clt"
            assert [w["site"] for w in feature["writes"]] == list(sae.write_sites)
            assert [w["norm"] for w in feature["writes"]] == pytest.approx(expected_FS[latent].tolist(), rel=1e-6)
    # The cross decoders are rescaled by s_j / s_i in raw space: the index measures those, not the trained ones.
    assert not torch.allclose(clt_run.clt.decoder_to(0, 2), random_clt(5).decoder_to(0, 2))


def test_a_single_layer_dictionary_writes_one_site(clt_run: CltRun) -> None:
    reader = IndexReader(clt_run.index)
    sae = reader.sae("res")
    assert sae is not None
    assert (sae.parent, sae.write_sites) == (None, ("layer_1/res",))
    W_dec_FD = random_sae(D, WIDTH, 6).W_dec_FD.detach()
    for latent in range(WIDTH):
        feature = reader.feature(sae, latent)
        assert feature is not None
        assert feature["parent"] is None
        assert feature["writes"] == [{"site": "layer_1/res", "norm": pytest.approx(float(W_dec_FD[latent].norm()))}]


def test_the_api_and_exports_carry_writes_and_parents(clt_run: CltRun, client: TestClient, tmp_path: Path) -> None:
    suite = client.get("/api/suite").json()
    assert {s["name"]: s["parent"] for s in suite["saes"]} == {
        block_name(0): "clt", block_name(1): "clt", block_name(2): "clt", "res": None,
    }  # fmt: skip
    sae = client.get(f"/api/saes/{block_name(1)}").json()["sae"]
    assert (sae["parent"], sae["write_sites"]) == ("clt", ["layer_1/mlp", "layer_2/mlp"])
    feature = client.get(f"/api/saes/{block_name(1)}/latents/4").json()
    expected = [float(clt_run.clt.decoder_to(1, j)[4].detach().norm()) for j in (1, 2)]
    assert [w["site"] for w in feature["writes"]] == ["layer_1/mlp", "layer_2/mlp"]
    assert [w["norm"] for w in feature["writes"]] == pytest.approx(expected, rel=1e-6)
    last = client.get(f"/api/saes/{block_name(2)}/latents/0").json()
    assert [w["site"] for w in last["writes"]] == ["layer_2/mlp"]  # the last block writes only its own layer
    record = client.get(f"/api/saes/{block_name(1)}/latents/4/neuronpedia").json()
    assert record["saescope"]["parent"] == "clt"
    assert record["saescope"]["writes"] == feature["writes"]
    assert client.get(f"/api/saes/{block_name(1)}/latents/{WIDTH}").status_code == 404
    site = tmp_path / "site"
    write_static_site(IndexReader(clt_run.index), site, progress=False)
    key = f"saes/{block_name(1)}/latents/4"
    text = (site / "data" / f"{key}.js").read_text()
    prefix = f"__saescope_put({json.dumps(key)},"
    assert text.startswith(prefix)
    assert json.loads(text[len(prefix) : -3])["writes"] == feature["writes"]


def test_write_norms_in_chunks_match_whole_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    W_a_FD, W_b_FD = torch.randn(10, 6, generator=generator), torch.randn(10, 3, generator=generator)
    norms_FS = write_norms([W_a_FD.bfloat16(), W_b_FD], chunk=3)
    assert norms_FS.shape == (10, 2)
    assert norms_FS.dtype == torch.float32
    expected_FS = torch.stack([W_a_FD.bfloat16().float().norm(dim=1), W_b_FD.norm(dim=1)], dim=1)
    torch.testing.assert_close(norms_FS, expected_FS)
