"""Load saescope's Gemma Scope 2 transcoder exports in circuit-tracer and build an attribution graph.

Run by tests/release/test_release_circuit_tracer.py with the Python of ``.venv-circuit-tracer`` (circuit-tracer
0.5.0 pins transformers<=4.57.3, saescope needs transformers>=5, so they cannot share a venv). It imports
nothing from saescope: everything it knows about our files is the GS2 layout, read with safetensors.

    python circuit_tracer_worker.py MODEL_DIR RELEASE_DIR [--prompt TEXT]

MODEL_DIR is a local Gemma 3 270M folder (config.json, model.safetensors, tokenizer), RELEASE_DIR an export
holding ``transcoder_all/layer_{L}_width_*/params.safetensors`` for every layer L of the model. Fully offline,
on the CPU, float32. Prints one JSON object (the last line of stdout):

    n_layers, d_transcoder, skip              what circuit-tracer loaded
    transcoder_max_abs_err                    its transcoder outputs vs a hand-computed JumpReLU (+ skip), over
    transcoder_max_abs_out, transcoder_active   random inputs at every layer; the output scale; active codes
    logits_max_abs_err, logits_max_abs        the replacement model's logits vs the HF model's; their scale
    top_token_equal                           the two models' next-token argmax agree at every position
    preacts_max_abs_err, preacts_max_abs      circuit-tracer's pre-activations at ``mlp.hook_in`` on the prompt vs
                                              ours from the HF module each config.json names in hf_hook_point_in
    mlp_out_max_abs_err, mlp_out_max_abs      TL's ``hook_mlp_out`` vs the HF module named in hf_hook_point_out:
                                              the sites circuit-tracer reads and writes are the ones we declare
    graph_*                                   attribute(...)'s graph: positions, active/selected features, logit
                                              targets, adjacency shape, whether the adjacency is finite
    seconds_*                                 wall time of each stage
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded: the model and files are local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from safetensors.torch import load_file

CPU = torch.device("cpu")  # a torch.device, not a string: circuit-tracer's GS2 loader reads device.type
LAYER_FOLDER = re.compile(r"^layer_(\d+)_width_")


def transcoder_paths(release: Path) -> dict[int, str]:
    folders = {int(m.group(1)): p for p in (release / "transcoder_all").iterdir() if (m := LAYER_FOLDER.match(p.name))}
    if sorted(folders) != list(range(len(folders))):
        raise SystemExit(f"{release}/transcoder_all: need one folder per layer 0..n-1, found layers {sorted(folders)}")
    return {layer: str(folders[layer] / "params.safetensors") for layer in sorted(folders)}


def jumprelu_preacts(raw: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return x @ raw["w_enc"] + raw["b_enc"]


def transcoder_output(raw: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The GS2 transcoder by hand: JumpReLU(x W_enc + b_enc) W_dec + b_dec (+ x W_skip); and its active codes."""
    pre = jumprelu_preacts(raw, x)
    codes = pre * (pre > raw["threshold"])
    out = codes @ raw["w_dec"] + raw["b_dec"]
    if "affine_skip_connection" in raw:
        out = out + x @ raw["affine_skip_connection"]
    return out, int((codes != 0).sum())


def capture_into(store: dict[int, torch.Tensor], layer: int) -> Callable[..., None]:
    """A forward hook that keeps the module's output (of the single prompt) as ``store[layer]``."""

    def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        store[layer] = output[0].detach()

    return hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("release_dir", type=Path)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--model-name", default="google/gemma-3-270m", help="TransformerLens config to use")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary: dict[str, object] = {}
    started = time.perf_counter()
    paths = transcoder_paths(args.release_dir)
    raws = {layer: load_file(path) for layer, path in paths.items()}
    transcoders = load_transcoder_set(
        paths, scan="saescope", feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out",
        special_load_fn="gemma-scope-2", device=CPU, dtype=torch.float32, lazy_encoder=False, lazy_decoder=False,
    )  # fmt: skip
    summary |= {"n_layers": transcoders.n_layers, "d_transcoder": transcoders.d_transcoder,
                "skip": bool(transcoders.skip_connection)}  # fmt: skip

    generator = torch.Generator().manual_seed(0)
    err = scale = 0.0
    active = 0
    with torch.no_grad():
        for layer, raw in raws.items():
            x = torch.randn(32, raw["w_enc"].shape[0], generator=generator)
            expected, n_active = transcoder_output(raw, x)
            err = max(err, (transcoders[layer](x) - expected).abs().max().item())
            scale, active = max(scale, expected.abs().max().item()), active + n_active
    summary |= {"transcoder_max_abs_err": err, "transcoder_max_abs_out": scale, "transcoder_active": active}
    summary["seconds_transcoders"] = time.perf_counter() - started

    # circuit-tracer 0.5.0 bug: _deduplicate_attention_buffers shares one layer's rotary sin/cos tables with
    # every layer, but Gemma 3 alternates local (RoPE base 10k) and global (base 1M) attention layers, so all
    # layers would get the global tables and the logits would be wrong. Keep each layer's own tables.
    TransformerLensReplacementModel._deduplicate_attention_buffers = lambda self: None  # type: ignore[method-assign]
    started = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir), local_files_only=True)
    # The name picks TransformerLens' built-in Gemma 3 270M config; the weights and tokenizer are the objects.
    model = ReplacementModel.from_pretrained_and_transcoders(
        args.model_name, transcoders, backend="transformerlens", device=CPU, dtype=torch.float32,
        hf_model=hf, tokenizer=tokenizer,
    )  # fmt: skip
    summary["seconds_replacement_model"] = time.perf_counter() - started

    started = time.perf_counter()
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    captured: dict[str, dict[int, torch.Tensor]] = {"in": {}, "out": {}}
    hooks = []
    for layer, path in paths.items():  # the HF modules our config.json names: hf_hook_point_in / _out
        config = json.loads((Path(path).parent / "config.json").read_text())
        for key in ("in", "out"):
            module = hf.get_submodule(config[f"hf_hook_point_{key}"].removesuffix(".output"))
            hooks.append(module.register_forward_hook(capture_into(captured[key], layer)))
    with torch.no_grad():
        expected_logits = hf(ids).logits[0]
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_mlp_out"))
        logits = logits[0]
        _, preacts = model.get_activations(ids, apply_activation_function=False)  # (layers, positions, F)
    summary |= {
        "logits_max_abs_err": (logits - expected_logits).abs().max().item(),
        "logits_max_abs": expected_logits.abs().max().item(),
        "top_token_equal": bool(torch.equal(logits.argmax(-1), expected_logits.argmax(-1))),
    }
    # circuit-tracer zeroes the first position (BOS) of its feature activations: compare the others.
    ours = torch.stack([jumprelu_preacts(raws[i], captured["in"][i]) for i in sorted(raws)])
    summary |= {"preacts_max_abs_err": (preacts[:, 1:] - ours[:, 1:]).abs().max().item(),
                "preacts_max_abs": ours[:, 1:].abs().max().item()}  # fmt: skip
    hf_out = torch.stack([captured["out"][i] for i in sorted(raws)])
    tl_out = torch.stack([cache[f"blocks.{i}.hook_mlp_out"][0] for i in sorted(raws)])
    summary |= {
        "mlp_out_max_abs_err": (tl_out - hf_out).abs().max().item(),
        "mlp_out_max_abs": hf_out.abs().max().item(),
    }
    summary["seconds_forward_checks"] = time.perf_counter() - started

    started = time.perf_counter()
    graph = attribute(args.prompt, model, max_n_logits=3, batch_size=64, max_feature_nodes=32, verbose=False)
    summary |= {
        "graph_positions": int(graph.input_tokens.shape[0]),
        "graph_active_features": int(graph.active_features.shape[0]),
        "graph_selected_features": int(graph.selected_features.shape[0]),
        "graph_logit_targets": len(graph.logit_targets),
        "graph_adjacency_shape": list(graph.adjacency_matrix.shape),
        "graph_adjacency_finite": bool(torch.isfinite(graph.adjacency_matrix).all()),
        "graph_adjacency_nonzero": int((graph.adjacency_matrix != 0).sum()),
    }
    summary["seconds_attribute"] = time.perf_counter() - started
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
