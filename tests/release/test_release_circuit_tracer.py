"""Interoperability with circuit-tracer: it loads our Gemma Scope 2 transcoder exports and attributes through them.

circuit-tracer 0.5.0 needs transformers<=4.57.3 and saescope transformers>=5, so it lives in its own venv,
``.venv-circuit-tracer`` (``make test`` creates it), and runs circuit_tracer_worker.py as a subprocess on the
files we export; the test skips when that venv is missing. One case takes about a minute and 8 GB of memory
on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from release_fixtures import random_jumprelu, write_dictionary_folder

from saescope.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, ensure_embedded_converted
from saescope.release import export_release
from saescope.sae import DictionaryConfig

REPO = Path(__file__).resolve().parents[2]
CT_PYTHON = REPO / ".venv-circuit-tracer" / "bin" / "python"
WORKER = Path(__file__).with_name("circuit_tracer_worker.py")
WIDTH = 64  # small: the model dominates time and memory either way
MAX_FEATURE_NODES = 32  # the worker's attribute(..., max_feature_nodes=32, max_n_logits=3)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CT_PYTHON.is_file(),
        reason=f"{CT_PYTHON.relative_to(REPO)} is missing: `make test` (or `make circuit-tracer-venv`) creates it; "
        "circuit-tracer 0.5.0 needs transformers<=4.57.3, so it has its own venv",
    ),
]


def write_transcoder_release(tmp_path: Path, *, n_layers: int, d_model: int, skip: bool) -> Path:
    """A run of one small random JumpReLU transcoder (mlp_in -> mlp) per layer, exported in the GS2 layout.

    norm_scale 1: the training space is the raw space, so the exported weights are the random ones.
    """
    run = tmp_path / "run"
    config = DictionaryConfig(d_in=d_model, width=WIDTH, apply_pre_encoder_bias=False, skip=skip)
    for layer in range(n_layers):
        write_dictionary_folder(run, f"tc{layer}", random_jumprelu(config, 100 + layer), site=f"layer_{layer}/mlp_in",
                                norm_scale=1.0, l0=20.0, extra_config={"site_out": f"layer_{layer}/mlp"})  # fmt: skip
    out = tmp_path / "release"
    summary = export_release(run, out, ["gemmascope2"], model_name=DEFAULT_MODEL)
    assert len(summary.exported["gemmascope2"]) == n_layers
    return out


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "plain"])
def test_circuit_tracer_loads_our_transcoders_and_builds_a_graph(tmp_path: Path, skip: bool) -> None:
    model_dir, _ = ensure_embedded_converted(EMBEDDED_MODELS[DEFAULT_MODEL])
    model_config = json.loads((model_dir / "config.json").read_text())
    n_layers, d_model = model_config["num_hidden_layers"], model_config["hidden_size"]  # 18, 640
    release = write_transcoder_release(tmp_path, n_layers=n_layers, d_model=d_model, skip=skip)

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [str(CT_PYTHON), str(WORKER), str(model_dir), str(release)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"circuit_tracer_worker.py exited {done.returncode}:\n{done.stderr[-6000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1), file=sys.stderr)  # shown with -rA or on failure

    assert (result["n_layers"], result["d_transcoder"], result["skip"]) == (n_layers, WIDTH, skip)
    # circuit-tracer's transcoder vs the same float32 formula by hand on random inputs: only the summation
    # order differs (~1e-7 relative, 1e-6 seen on outputs up to ~14); a transposed matrix, a missing bias or
    # skip, or a wrong threshold would be O(1).
    assert result["transcoder_active"] > 0  # not a check on all-zero codes
    assert result["transcoder_max_abs_err"] <= 1e-5 * result["transcoder_max_abs_out"]
    # The replacement model (TransformerLens) vs the HF model: two float32 implementations of the same 18
    # layers (2e-5 seen on logits up to ~22); wrong RoPE tables (circuit-tracer's bug, patched in the worker)
    # give errors orders of magnitude larger.
    assert result["logits_max_abs_err"] <= 1e-3
    assert result["top_token_equal"]
    # The sites: circuit-tracer's pre-activations at mlp.hook_in vs ours from the HF module our config.json
    # names (5e-6 seen on ~7; the same model differences as above), and TL's hook_mlp_out vs our hook_out
    # module (Gemma's MLP outputs reach ~2e4: relative 2e-7 seen). Reading any other site would be O(1).
    assert result["preacts_max_abs_err"] <= 1e-4 * max(1.0, result["preacts_max_abs"])
    assert result["mlp_out_max_abs_err"] <= 1e-5 * result["mlp_out_max_abs"]
    # The graph: nodes are the selected features, one error node per (layer, position), the tokens and the
    # logit targets, in that order.
    positions, selected = result["graph_positions"], result["graph_selected_features"]
    nodes = selected + n_layers * positions + positions + result["graph_logit_targets"]
    assert result["graph_adjacency_shape"] == [nodes, nodes]
    assert 0 < selected <= min(MAX_FEATURE_NODES, result["graph_active_features"])
    assert 1 <= result["graph_logit_targets"] <= 3
    assert result["graph_adjacency_finite"]
    assert result["graph_adjacency_nonzero"] > 0
