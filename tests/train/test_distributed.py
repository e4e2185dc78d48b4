"""torchrun: dictionaries sharded over ranks, activations produced once, per-rank checkpoints (CPU, gloo).

The multi-process tests launch real `torchrun --standalone` jobs (torchrun's c10d rendezvous picks a
free port on localhost). The worker is this very file run as a script (`_worker`). Starting a job
costs several seconds (imports, rendezvous), so the module fixture `jobs` runs every 2-rank job in two
launches -- "before" (complete runs, and runs stopped early as if killed) and "after" (the resumes) --
and the tests check what they left. Every rank runs with one thread and so do the one-process
references, so the comparisons are exact: `torch.equal` on every weight, equal bytes for the cache
shards and for metrics.jsonl -- the ranks run the same float operations on the same batches as one
process does.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.cli import main
from saescope.data.activations import stream_token_activations
from saescope.data.arrays import ArrayActivations
from saescope.data.cache import ActivationCache
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.sources import build_cache, streamed_source
from saescope.data.windows import special_token_ids, stack_windows
from saescope.models.loading import load_model
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.distributed import (
    assign_dictionaries,
    build_cache_split,
    check_checkpoint_layout,
    current,
    dictionary_cost,
    rank_split_forwards,
    split_token_stream,
    torchrun_session,
    train_suite,
)
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE

SRC = Path(__file__).resolve().parents[2] / "src"
RES0, RES1, MLP1 = Site(0, SiteKind.RES), Site(1, SiteKind.RES), Site(1, SiteKind.MLP)
STREAM_OPTIONS = {"norm_tokens": 100, "buffer_tokens": 512}
CACHE_OPTIONS = {"tokens": 1200, "dtype": "float32", "batch_windows": 3, "windows_per_shard": 5, "progress": False}


# --- what the workers and the one-process references train --------------------------------------------
def array_source() -> ArrayActivations:
    generator = torch.Generator().manual_seed(0)
    return ArrayActivations(
        {RES0: torch.randn(3000, 16, generator=generator) + 0.3, RES1: torch.randn(3000, 24, generator=generator)}
    )


def five_specs() -> list[SAESpec]:
    """Five dictionaries of uneven cost on two sites (no even split over 2 ranks exists)."""
    specs = []
    for site, d_in, width in [(RES0, 16, 32), (RES0, 16, 64), (RES1, 24, 48), (RES1, 24, 96), (RES1, 24, 16)]:
        dictionary = DictionaryConfig(
            d_in=d_in, width=width, threshold_parameterisation="raw", lambda_warmup_steps=0, l0_coefficient=3e-3
        )
        specs.append(SAESpec(f"{site.id.replace('/', '-')}-{width}", site, dictionary, lr=2e-3, target_l0=4.0))
    return specs


def model_specs(sites: list[Site]) -> list[SAESpec]:
    """One dictionary per site of the tiny model (width 32)."""
    dictionary = DictionaryConfig(d_in=32, width=32, threshold_parameterisation="raw", lambda_warmup_steps=0)
    return [SAESpec(site.id.replace("/", "-"), site, dictionary, lr=2e-3, target_l0=4.0) for site in sites]


def train_config(steps: int, batch_size: int = 128) -> TrainConfig:
    return TrainConfig(
        total_tokens=steps * batch_size, batch_size=batch_size, lr_warmup_steps=3, checkpoint_every_steps=4,
        progress=False,
    )  # fmt: skip


def train_cli(root: Path, out: Path) -> list[str]:
    """`saescope train` on the tiny model's live stream (2 sites x 2 widths)."""
    return [
        "train", "--model", str(root / "model"), "--corpus", str(root / "small.jsonl"), "--context-size", "16",
        "--sites", "0-1/res", "--widths", "16,32", "--target-l0", "4", "--tokens", "1536", "--batch-size", "128",
        "--set", "lr=1e-3", "--set", "lr_warmup_steps=2", "--checkpoint-every", "4", "--out", str(out),
    ]  # fmt: skip


def corpus_config(root: Path) -> CorpusConfig:
    return CorpusConfig(source=str(root / "small.jsonl"), context_size=16)


# --- the worker: this file, run by torchrun ----------------------------------------------------------
def _worker(phase: str, root_text: str) -> None:
    torch.set_num_threads(1)
    root = Path(root_text)
    with torchrun_session() as ctx:
        assert ctx is not None
        assert current() is ctx
        loaded = load_model(str(root / "model"))
        corpus = corpus_config(root)
        forwards = rank_split_forwards(ctx)
        stream = streamed_source(loaded, [RES0, MLP1], corpus, batch_windows=3, forwards=forwards, **STREAM_OPTIONS)
        if phase == "before":
            train_suite(five_specs(), array_source(), train_config(24), root / "array")
            train_suite(five_specs(), array_source(), train_config(24), root / "array_killed", max_steps=10)
            train_suite(five_specs(), array_source(), train_config(24), root / "array_killed_early", max_steps=6)
            windows = stack_windows(corpus_windows(corpus, loaded.tokenizer, "train"), 3)
            special = special_token_ids(loaded.tokenizer)
            chunks = list(split_token_stream(loaded.model, [RES0, MLP1], windows, special, ctx))
            torch.save(chunks, root / f"token_stream.rank{ctx.rank}.pt")
            train_suite(model_specs([RES0, MLP1]), stream, train_config(40), root / "stream", max_steps=13)
            build_cache_split(root / "cache", loaded, [RES0, MLP1], corpus, ctx, **CACHE_OPTIONS)
            # One dictionary on two ranks: rank 1 trains nothing, but it computed half the cache's forwards.
            train_suite(model_specs([MLP1]), ActivationCache(root / "cache"), train_config(20), root / "cache_train")
            exit_code = main(train_cli(root, root / "cli"))
            assert exit_code in (0, IMPLAUSIBLE_EXIT_CODE)  # tiny runs may end implausible
            (root / f"cli_exit_code.rank{ctx.rank}").write_text(str(exit_code))
        elif phase == "after":
            train_suite(five_specs(), array_source(), train_config(24), root / "array_killed")
            train_suite(five_specs(), array_source(), train_config(24), root / "array_killed_early")
            train_suite(model_specs([RES0, MLP1]), stream, train_config(40), root / "stream")
        else:
            raise ValueError(phase)


def torchrun(nproc: int, *args: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "--max-restarts=0", "--monitor-interval=0.1", *args,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma 3 model folder and a small corpus (about 1,400 training tokens, ~95 windows of 16)."""
    # Imported here: torchrun runs this file as a script, where the tests folder is not on the path.
    from tiny_models import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("distributed")
    build_tiny_model("gemma3").save_pretrained(folder / "model")
    build_tiny_tokenizer().save_pretrained(folder / "model")
    rng = random.Random(2)
    lines = [json.dumps({"text": " ".join(f"w{rng.randrange(90)}" for _ in range(25))}) for _ in range(60)]
    (folder / "small.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def jobs(root: Path) -> Path:
    torchrun(2, __file__, "before", str(root))
    # As if rank 0 had written its step-14 checkpoint and the job died before rank 1 wrote its own.
    killed = root / "array_killed"
    for suffix in ("", ".sha256"):  # the checkpoint and its checksum record
        step_10, step_14 = (killed / f"checkpoint.rank0-of-2.step{step:09d}.pt{suffix}" for step in (10, 14))
        shutil.copy(step_10, step_14)
    # As if the job had died during the very first checkpoint, after rank 0 wrote it and before rank 1 did.
    for suffix in ("", ".sha256"):
        (root / "array_killed_early" / f"checkpoint.rank1-of-2.step000000006.pt{suffix}").unlink()
    torchrun(2, __file__, "after", str(root))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_weights(expected: Path, actual: Path) -> None:
    names = sorted(p.name for p in (expected / "saes").iterdir())
    assert sorted(p.name for p in (actual / "saes").iterdir()) == names
    for name in names:
        want = load_file(expected / "saes" / name / "sae.safetensors")
        got = load_file(actual / "saes" / name / "sae.safetensors")
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}.{key} differs"


# --- assignment -------------------------------------------------------------------------------------
def test_assignment_is_balanced_deterministic_and_covers_every_dictionary_once() -> None:
    costs = [dictionary_cost(spec) for spec in five_specs()]
    assert costs == [32 * 32, 64 * 32, 48 * 48, 96 * 48, 16 * 48]
    owned = assign_dictionaries(costs, 2)
    # Largest first: 4608 -> rank 0; 2304, 2048, 1024 -> rank 1 (still the lighter); 768 -> rank 0.
    assert owned == [[3, 4], [0, 1, 2]]
    assert owned == assign_dictionaries(list(costs), 2)
    for world_size in (1, 2, 3, 4, 7, 16):
        owned = assign_dictionaries(costs, world_size)
        assert len(owned) == world_size
        assert sorted(i for rank in owned for i in rank) == list(range(5))  # each exactly once
        loads = [sum(costs[i] for i in rank) for rank in owned]
        assert max(loads) - min(loads) <= max(costs)
    assert assign_dictionaries(costs, 7)[5:] == [[], []]  # more ranks than dictionaries: the last get none
    assert assign_dictionaries([], 3) == [[], [], []]
    assert assign_dictionaries([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]  # ties: lower index onto lower rank
    with pytest.raises(ValueError, match="world_size"):
        assign_dictionaries(costs, 0)


# --- array source: two ranks = one process; resume after a kill ---------------------------------------
def test_two_ranks_train_five_dictionaries_exactly_as_one_process(jobs: Path, tmp_path: Path) -> None:
    Trainer(five_specs(), array_source(), train_config(24), tmp_path).run()
    assert_same_weights(tmp_path, jobs / "array")
    assert (jobs / "array" / "metrics.jsonl").read_text() == (tmp_path / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (jobs / "array").glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.step000000024.pt", "checkpoint.rank0-of-2.step000000024.pt.sha256",
        "checkpoint.rank1-of-2.step000000024.pt", "checkpoint.rank1-of-2.step000000024.pt.sha256",
    ]  # fmt: skip


@pytest.mark.parametrize("folder", ["array_killed", "array_killed_early"])
def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_result(jobs: Path, folder: str) -> None:
    # array_killed: killed after step 10 with rank 0 one checkpoint ahead; both continued from step 10.
    # array_killed_early: rank 1 had no checkpoint at all; both started again from step 0.
    assert_same_weights(jobs / "array", jobs / folder)
    assert (jobs / folder / "metrics.jsonl").read_text() == (jobs / "array" / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (jobs / folder).glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.step000000024.pt", "checkpoint.rank0-of-2.step000000024.pt.sha256",
        "checkpoint.rank1-of-2.step000000024.pt", "checkpoint.rank1-of-2.step000000024.pt.sha256",
    ]  # fmt: skip


def test_resuming_with_another_number_of_processes_is_refused(jobs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"2 torchrun processes.*--nproc-per-node = 2"):
        train_suite(five_specs(), array_source(), train_config(24), jobs / "array")  # one process
    Trainer(five_specs(), array_source(), train_config(2), tmp_path).run()
    for world_size in (2, 3):
        with pytest.raises(ValueError, match=r"one process \(no torchrun\)"):
            check_checkpoint_layout(tmp_path, world_size)
    check_checkpoint_layout(tmp_path, 1)
    check_checkpoint_layout(jobs / "array", 2)


# --- live stream: forwards split over the ranks --------------------------------------------------------
def test_every_rank_sees_the_one_process_token_stream(jobs: Path) -> None:
    loaded = load_model(str(jobs / "model"))
    windows = stack_windows(corpus_windows(corpus_config(jobs), loaded.tokenizer, "train"), 3)
    special = special_token_ids(loaded.tokenizer)
    expected = list(stream_token_activations(loaded.model, [RES0, MLP1], windows, special))
    assert len(expected) > 10  # many rounds, the last one uneven or not: 2 window batches per round
    for rank in range(2):
        chunks = torch.load(jobs / f"token_stream.rank{rank}.pt", weights_only=False)
        assert len(chunks) == len(expected)
        for got, want in zip(chunks, expected, strict=True):
            assert got.n_windows == want.n_windows
            for field in ("token_ids_N", "windows_N", "positions_N"):
                assert torch.equal(getattr(got, field), getattr(want, field))
            for site in (RES0, MLP1):
                assert torch.equal(got.acts[site], want.acts[site])


def test_a_streamed_two_rank_run_killed_and_resumed_equals_one_process(jobs: Path, tmp_path: Path) -> None:
    loaded = load_model(str(jobs / "model"))
    source = streamed_source(loaded, [RES0, MLP1], corpus_config(jobs), batch_windows=3, **STREAM_OPTIONS)
    Trainer(model_specs([RES0, MLP1]), source, train_config(40), tmp_path).run()
    training = json.loads((tmp_path / "saes" / "layer_0-res" / "config.json").read_text())["training"]
    windows = stack_windows(corpus_windows(corpus_config(jobs), loaded.tokenizer, "train"), 3)
    epoch_tokens = sum(c.n_tokens for c in stream_token_activations(loaded.model, [RES0], windows, {0, 1, 2}))
    assert training["tokens_seen"] > 3 * epoch_tokens  # epochs and resume-by-recomputing are covered
    assert_same_weights(tmp_path, jobs / "stream")
    # The run stopped at step 13 logged that step too (as a one-process run stopped there would).
    resumed = [json.loads(line) for line in (jobs / "stream" / "metrics.jsonl").read_text().splitlines()]
    assert [row for row in resumed if row["step"] != 13] == [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]


def test_saescope_train_under_torchrun_equals_one_process(jobs: Path, tmp_path: Path) -> None:
    exit_code = main(train_cli(jobs, tmp_path))
    assert exit_code in (0, IMPLAUSIBLE_EXIT_CODE)
    # Every rank exits as one process would: torchrun reports a failure only through some rank's status.
    assert [(jobs / f"cli_exit_code.rank{rank}").read_text() for rank in (0, 1)] == [str(exit_code)] * 2
    assert_same_weights(tmp_path, jobs / "cli")
    assert (jobs / "cli" / "metrics.jsonl").read_text() == (tmp_path / "metrics.jsonl").read_text()


# --- cache: forwards split while building it, every rank reading it ------------------------------------
def test_a_cache_built_on_two_ranks_is_byte_identical_and_trains_the_same(jobs: Path, tmp_path: Path) -> None:
    loaded = load_model(str(jobs / "model"))
    build_cache(tmp_path / "cache", loaded, [RES0, MLP1], corpus_config(jobs), **CACHE_OPTIONS)
    one = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    two = json.loads((jobs / "cache" / "manifest.json").read_text())
    assert len(two["shards"]) > 1
    assert (two["settings"], two["shards"]) == (one["settings"], one["shards"])  # each shard's SHA-256 too
    Trainer(model_specs([MLP1]), ActivationCache(tmp_path / "cache"), train_config(20), tmp_path / "train").run()
    assert_same_weights(tmp_path / "train", jobs / "cache_train")
    # Rank 1 had no dictionary: it logged no rows and checkpointed none, but kept in step.
    assert (jobs / "cache_train" / "metrics.rank1-of-2.jsonl").read_text() == ""
    rank1 = torch.load(jobs / "cache_train" / "checkpoint.rank1-of-2.step000000020.pt", weights_only=False)
    assert rank1["members"] == {}
    assert rank1["step"] == 20


# --- the whole pipeline: `torchrun -m saescope run` ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("activations", ["cache", "stream"])
def test_saescope_run_under_torchrun_trains_the_same_suite_and_finishes_every_stage(
    activations: str, tiny_model_dir: Path, jsonl_corpus: Path, tmp_path: Path
) -> None:
    args = [
        "run", "--preset", "smoke", "--model", str(tiny_model_dir), "--corpus", str(jsonl_corpus),
        "--context-size", "16", "--sites", "0-1/res+mlp", "--widths", "32,48", "--target-l0", "res=4,mlp=5",
        "--tokens", "2048", "--batch-size", "256", "--eval-tokens", "256", "--eval-loss-windows", "2",
        "--activations", activations, "--runs-dir", str(tmp_path),
    ]  # fmt: skip
    assert main([*args, "--name", "one"]) == 0
    output = torchrun(2, "-m", "saescope", *args, "--name", "two")
    assert output.count("Run folder:") == 1  # rank 0 alone prints
    assert "| layer_1/mlp | mlp | jumprelu | 48 |" in output
    assert_same_weights(tmp_path / "one" / "train", tmp_path / "two" / "train")  # 8 dictionaries, 4 per rank
    stages = json.loads((tmp_path / "two" / "stages.json").read_text())
    assert list(stages) == ["activations", "eval", "index", "release", "train"]
    assert stages["train"]["dictionaries"] == 8
    assert (tmp_path / "two" / "report" / "report.html").is_file()
    assert len(list((tmp_path / "two" / "release" / "gemmascope").rglob("params.npz"))) == 8
    if activations == "cache":
        one = json.loads((tmp_path / "one" / "cache" / "manifest.json").read_text())
        two = json.loads((tmp_path / "two" / "cache" / "manifest.json").read_text())
        assert two["shards"] == one["shards"]
    resumed = torchrun(2, "-m", "saescope", "run", "--resume", str(tmp_path / "two"))
    assert "[train] already done, skipped" in resumed


if __name__ == "__main__":
    _worker(*sys.argv[1:])
