"""Training-step throughput: saescope's sparse and dense kernels against SAELens and sparsify, in one run.

For d_in 640 (Gemma 3 270M's residual width), batch 4096 and dictionary widths 4096, 16384 and 65536,
on the same activations and from the same initial dictionary, it times one optimiser step of:

* ``saescope JumpReLU sparse``: ``loss`` with ``step_kernel="sparse"`` (saescope.sae.sparse: one dense
  encoder product, everything else on the active codes), ``backward``, ``project_decoder_grad_``, Adam,
  ``zero_grad``, ``normalize_decoder_`` (method §2.4), θ trained directly (``threshold_parameterisation``
  "raw", as SAELens does);
* ``saescope JumpReLU dense``: the same with ``step_kernel="dense"`` (autograd, the reference);
* ``saescope Trainer step``: ``Trainer._train_member`` (the same plus LR schedule, finite-loss check,
  dead-latent counters and batch FVU) with the default ``step_kernel="auto"`` and the trainer's optimiser;
* ``SAELens JumpReLU``: ``JumpReLUTrainingSAE`` driven by ``SAETrainer.step`` (same learning rate,
  betas, bandwidth and L0 coefficient), in SAELens' own venv (``saelens_train_step_worker.py``);
* ``saescope TopK sparse`` and ``sparsify TopK`` (``eai-sparsify``'s ``SparseCoder`` and its trainer's
  per-step work with Adam; ``sparsify_train_step_worker.py``), k = the target L0;
* ``fp32 GEMM``: one B×d @ d×W product, the encoder's shape, into a preallocated output.

The activations are Gaussian, scaled so that E‖x‖² = 1 as saescope's normalised activations are. Every
system starts from the same dictionary: saescope's initialisation (W_enc = W_decᵀ, unit decoder rows),
with each JumpReLU threshold set to the quantile of its latent's pre-activations on the batch that makes
it fire on L0/W of the tokens, so L0 ≈ ``--l0`` (50) from the first step; TopK systems use k = ``--l0``.
The L0 column shows what each system's last timed step measured.

Columns: tokens/s and ms/step are medians over the timed steps; "vs SAELens" is the median over step
indices of (SAELens step time / this step time); "of GEMM bound" is the median of (one encoder GEMM /
this step), i.e. the fraction of the throughput a step that did nothing but the unavoidable encoder
product would reach; "peak MB" is, measured in a fresh process per system and width, how much resident
memory grew from just before the system was built to the peak of its first step (parameters, gradients,
optimiser state and the step's transient memory; Linux only; ``--no-memory`` skips it). The systems (and
the GEMM) run interleaved step by step in a rotating order, so load from other processes hits them
alike; the peers run in worker processes that wait on a pipe while the others step.

Set up the peers once (torch first, so that pip keeps the CPU build)::

    python3 -m venv /tmp/bench_saelens && /tmp/bench_saelens/bin/pip install torch==2.13.0 sae-lens
    python3 -m venv /tmp/bench_sparsify && /tmp/bench_sparsify/bin/pip install torch==2.13.0 eai-sparsify

Run from the repository root, on a machine nothing else is using (absolute figures on a loaded machine
are meaningless; the same-run ratios hold up better)::

    .venv/bin/python benchmarks/train_step.py                 # widths 4096, 16384, 65536 (~10 GB RAM)
    .venv/bin/python benchmarks/train_step.py --widths 16384  # the goal's width only
    .venv/bin/python benchmarks/train_step.py --quick         # width 4096, 1 warm-up + 2 steps
    .venv/bin/python benchmarks/train_step.py --profile       # also: where a sparse step's time goes

A peer that is not installed, or fails, is reported with the reason instead of a row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary, single_layer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_step_worker_protocol import PeakMemory  # noqa: E402 (a sibling module, shared with the workers)

SC_SPARSE = "saescope JumpReLU sparse"
SC_DENSE = "saescope JumpReLU dense"
SC_TRAINER = "saescope Trainer step"
SAELENS = "SAELens JumpReLU"
SC_TOPK = "saescope TopK sparse"
SPARSIFY = "sparsify TopK"
GEMM = "fp32 GEMM (encoder shape)"
SYSTEMS = (SC_SPARSE, SC_DENSE, SC_TRAINER, SAELENS, SC_TOPK, SPARSIFY)
SYSTEM_KEYS = {"sparse": SC_SPARSE, "dense": SC_DENSE, "trainer": SC_TRAINER, "saelens": SAELENS,
               "topk": SC_TOPK, "sparsify": SPARSIFY}  # fmt: skip


@dataclass(frozen=True)
class Peer:
    name: str
    worker: Path
    default_python: str
    env_var: str


PEERS = {
    SAELENS: Peer(SAELENS, HERE / "saelens_train_step_worker.py", "/tmp/bench_saelens/bin/python", "SAELENS_PYTHON"),
    SPARSIFY: Peer(
        SPARSIFY, HERE / "sparsify_train_step_worker.py", "/tmp/bench_sparsify/bin/python", "SPARSIFY_PYTHON"
    ),
}


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    l0: float = math.nan
    peak_mb: float = math.nan


#: A system at one width: run step `index`, return (seconds, L0).
Step = Callable[[int], tuple[float, float]]


# ------------------------------------------------------------------------------------------------
# Shared inputs
# ------------------------------------------------------------------------------------------------


def make_activations(batch: int, d_in: int, seed: int) -> torch.Tensor:
    """Gaussian rows scaled so that E‖x‖² = 1 (saescope trains on x / C with C = sqrt(E‖x‖²))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, d_in, generator=generator) / math.sqrt(d_in)


def jumprelu_config(args: argparse.Namespace, width: int, kernel: str) -> DictionaryConfig:
    return DictionaryConfig(
        d_in=args.d_in, width=width, threshold_parameterisation="raw", bandwidth=args.bandwidth,
        l0_coefficient=args.l0_coefficient, step_kernel=kernel,
    )  # fmt: skip


def topk_config(args: argparse.Namespace, width: int) -> DictionaryConfig:
    return DictionaryConfig(d_in=args.d_in, width=width, architecture="topk", k=args.l0, step_kernel="sparse")


@torch.no_grad()
def initial_weights(args: argparse.Namespace, width: int, x_BD: torch.Tensor) -> dict[str, torch.Tensor]:
    """saescope's initial JumpReLU with thresholds that make each latent fire on L0/W of the batch."""
    sae = build_dictionary(jumprelu_config(args, width, "dense"), generator=torch.Generator().manual_seed(0))
    assert isinstance(sae, JumpReLU)
    pre_BF = sae.pre_activations(x_BD)
    rank = max(1, round(x_BD.shape[0] * (1.0 - args.l0 / width)))
    theta_F = pre_BF.kthvalue(rank, dim=0).values.clamp_min(1e-3)
    del pre_BF
    parameters = {"W_enc": sae.W_enc_DF, "b_enc": sae.b_enc_F, "W_dec": sae.W_dec_FD, "b_dec": sae.b_dec_D}
    return {**{name: value.detach().clone() for name, value in parameters.items()}, "threshold": theta_F}


@torch.no_grad()
def load_into(sae: SparseDictionary, weights: dict[str, torch.Tensor]) -> None:
    sae.W_enc_DF.copy_(weights["W_enc"])
    sae.b_enc_F.copy_(weights["b_enc"])
    sae.W_dec_FD.copy_(weights["W_dec"])
    sae.b_dec_D.copy_(weights["b_dec"])
    if isinstance(sae, JumpReLU):
        sae.set_threshold_(weights["threshold"])


# ------------------------------------------------------------------------------------------------
# saescope systems (in this process)
# ------------------------------------------------------------------------------------------------


def saescope_loop(config: DictionaryConfig, weights: dict[str, torch.Tensor], x_BD: torch.Tensor, lr: float) -> Step:
    """method §2.4's step written out; Adam with fused=True (one pass over each parameter)."""
    sae = build_dictionary(config)
    load_into(sae, weights)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8, fused=True)

    def step(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        out = sae.loss(x_BD, step=index)
        out.total.backward()  # type: ignore[no-untyped-call]
        sae.project_decoder_grad_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        return time.perf_counter() - started, float(out.l0)

    return step


class _OneBatchSource:
    """The smallest `ActivationSource`: one site, one batch, scale 1 (the batch is already normalised)."""

    def __init__(self, site: Site, x_BD: torch.Tensor) -> None:
        self._site, self._x_BD = site, x_BD

    @property
    def sites(self) -> list[Site]:
        return [self._site]

    @property
    def widths(self) -> dict[Site, int]:
        return {self._site: int(self._x_BD.shape[1])}

    @property
    def norm_scales(self) -> dict[Site, float]:
        return {self._site: 1.0}

    def batches(self, batch_size: int, **_: Any) -> Iterator[dict[Site, torch.Tensor]]:
        yield {self._site: self._x_BD}


def saescope_trainer(
    config: DictionaryConfig, weights: dict[str, torch.Tensor], x_BD: torch.Tensor, lr: float, out_dir: Path
) -> Step:
    """The trainer's own per-dictionary step (its optimiser, schedules and bookkeeping)."""
    from saescope.train import SAESpec, TrainConfig, Trainer

    site = Site(0, SiteKind.RES)
    spec = SAESpec(name="bench", site=site, dictionary=config, lr=lr)
    train_config = TrainConfig(total_tokens=10**9, batch_size=int(x_BD.shape[0]), progress=False)
    trainer = Trainer([spec], _OneBatchSource(site, x_BD), train_config, out_dir)
    member = trainer.members[0]
    load_into(single_layer(member.sae, "the train-step benchmark"), weights)

    def step(index: int) -> tuple[float, float]:
        trainer.step = index
        started = time.perf_counter()
        trainer._train_member(member, x_BD, x_BD)  # an SAE: its target is its input
        return time.perf_counter() - started, member.last["l0"]

    return step


def gemm_step(batch: int, d_in: int, width: int) -> Step:
    """One fp32 (batch × d_in) @ (d_in × width) product into a preallocated output (best of 2)."""
    generator = torch.Generator().manual_seed(1)
    a_BD = torch.randn(batch, d_in, generator=generator)
    b_DF = torch.randn(d_in, width, generator=generator)
    out_BF = torch.empty(batch, width)

    def step(_index: int) -> tuple[float, float]:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            torch.matmul(a_BD, b_DF, out=out_BF)
            times.append(time.perf_counter() - started)
        return min(times), math.nan

    return step


# ------------------------------------------------------------------------------------------------
# Peers (worker processes in their own venvs)
# ------------------------------------------------------------------------------------------------


def find_python(peer: Peer, explicit: str | None) -> str | None:
    candidate = explicit or os.environ.get(peer.env_var) or peer.default_python
    return candidate if Path(candidate).is_file() and os.access(candidate, os.X_OK) else None


class Worker:
    """A peer's worker script under the peer's interpreter, driven one JSON line at a time."""

    def __init__(self, python: str, peer: Peer, acts_path: Path, args: argparse.Namespace) -> None:
        command = [
            python, str(peer.worker), "--acts", str(acts_path), "--threads", str(torch.get_num_threads()),
            "--lr", str(args.lr), "--l0-coefficient", str(args.l0_coefficient), "--bandwidth", str(args.bandwidth),
            "--k", str(args.l0),
        ]  # fmt: skip
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the worker)
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        while line := self._process.stdout.readline():
            if line.startswith("{"):  # peers may print banners on stdout
                message: dict[str, Any] = json.loads(line)
                if "error" in message:
                    raise RuntimeError(f"the worker answered: {message['error']}")
                return message
        self._stderr.seek(0)
        raise RuntimeError(f"the worker stopped (exit {self._process.wait()}):\n{self._stderr.read()[-3000:]}")

    def request(self, **message: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self._process.stdin.close()
            self._process.wait(timeout=120)
        self._stderr.close()


def worker_step(worker: Worker, width: int) -> Step:
    def step(_index: int) -> tuple[float, float]:
        answer = worker.request(cmd="step", width=width)
        return float(answer["seconds"]), float(answer["l0"])

    return step


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="4096,16384,65536", help="comma-separated dictionary widths")
    parser.add_argument("--quick", action="store_true", help="width 4096, 1 warm-up + 2 timed steps")
    parser.add_argument("--systems", default=",".join(SYSTEM_KEYS),
                        help=f"comma-separated subset of {','.join(SYSTEM_KEYS)} (default: all)")  # fmt: skip
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--l0", type=int, default=50, help="target L0 (JumpReLU thresholds) and TopK k")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per system (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per system (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads, here and in the workers")
    parser.add_argument(
        "--saelens-python", default=None, help=f"SAELens venv python (default {PEERS[SAELENS].default_python})"
    )
    parser.add_argument(
        "--sparsify-python", default=None, help=f"sparsify venv python (default {PEERS[SPARSIFY].default_python})"
    )
    parser.add_argument("--profile", action="store_true", help="profile one saescope sparse step per width")
    parser.add_argument(
        "--crossover", action="store_true", help="instead: dense vs sparse kernel across densities and sizes"
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes")
    parser.add_argument("--memory-of", choices=sorted(SYSTEM_KEYS), help=argparse.SUPPRESS)  # internal: one probe
    parser.add_argument("--acts", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--bandwidth", type=float, default=0.001)
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick:
        args.widths = "4096"
    args.width_list = [int(w) for w in args.widths.split(",") if w.strip()]
    unknown = sorted(set(args.systems.split(",")) - set(SYSTEM_KEYS))
    if unknown:
        parser.error(f"unknown --systems {unknown}; choose from {','.join(SYSTEM_KEYS)}")
    args.system_list = [SYSTEM_KEYS[key] for key in args.systems.split(",")]
    args.warmup = 1 if args.warmup is None else args.warmup
    args.steps = args.steps or (2 if args.quick else 5)
    return args


def start_workers(
    args: argparse.Namespace, acts_path: Path
) -> tuple[dict[str, Worker], dict[str, str], dict[str, str]]:
    """The peers' workers, a status line per peer, and each started peer's interpreter."""
    workers: dict[str, Worker] = {}
    status: dict[str, str] = {}
    pythons: dict[str, str] = {}
    for name, peer in PEERS.items():
        if name not in args.system_list:
            continue
        explicit = args.saelens_python if name == SAELENS else args.sparsify_python
        python = find_python(peer, explicit)
        if python is None:
            status[name] = f"not installed (looked for {explicit or peer.default_python}, ${peer.env_var})"
            continue
        try:
            workers[name] = Worker(python, peer, acts_path, args)
            pythons[name] = python
            info = workers[name].info
            status[name] = f"{info['package']} {info['version']}, torch {info['torch']}, {info['threads']} threads"
        except RuntimeError as error:
            status[name] = f"failed to start: {error}"
    return workers, status, pythons


def saescope_builders(
    args: argparse.Namespace, width: int, weights: dict[str, torch.Tensor], x_BD: torch.Tensor, scratch: Path
) -> dict[str, Callable[[], Step]]:
    return {
        SC_SPARSE: lambda: saescope_loop(jumprelu_config(args, width, "sparse"), weights, x_BD, args.lr),
        SC_DENSE: lambda: saescope_loop(jumprelu_config(args, width, "dense"), weights, x_BD, args.lr),
        SC_TRAINER: lambda: saescope_trainer(
            jumprelu_config(args, width, "auto"), weights, x_BD, args.lr, scratch / f"trainer-{width}"
        ),
        SC_TOPK: lambda: saescope_loop(topk_config(args, width), weights, x_BD, args.lr),
    }


def measure_peak_memory(
    args: argparse.Namespace, name: str, width: int, acts_path: Path, weights_path: Path, pythons: dict[str, str]
) -> float:
    """Peak MB of building ``name`` and running its first step, in a fresh process (so that nothing another
    system allocated or freed before distorts it)."""
    if name in PEERS:
        worker = Worker(pythons[name], PEERS[name], acts_path, args)
        try:
            worker.request(cmd="build", width=width, weights=str(weights_path))
            return float(worker.request(cmd="step", width=width)["peak_mb"])
        finally:
            worker.close()
    key = next(key for key, system in SYSTEM_KEYS.items() if system == name)
    command = [
        sys.executable, __file__, "--memory-of", key, "--widths", str(width), "--acts", str(acts_path),
        "--weights", str(weights_path), "--d-in", str(args.d_in), "--batch", str(args.batch), "--l0", str(args.l0),
        "--lr", str(args.lr), "--l0-coefficient", str(args.l0_coefficient), "--bandwidth", str(args.bandwidth),
        "--threads", str(torch.get_num_threads()),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe of {name} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return float(json.loads(lines[-1])["peak_mb"])


def memory_probe(args: argparse.Namespace) -> None:
    """``--memory-of``: build one saescope system from the shared files, run one step, print its peak MB."""
    x_BD = torch.from_numpy(np.load(args.acts)).float()
    with np.load(args.weights) as data:
        weights = {name: torch.from_numpy(np.array(data[name])) for name in data.files}
    with tempfile.TemporaryDirectory(prefix="saescope-bench-memory-") as scratch:
        memory = PeakMemory()
        memory.start()
        step = saescope_builders(args, args.width_list[0], weights, x_BD, Path(scratch))[SYSTEM_KEYS[args.memory_of]]()
        step(0)
        print(json.dumps({"peak_mb": memory.peak_mb()}))


def build_systems(
    args: argparse.Namespace, width: int, x_BD: torch.Tensor, workers: dict[str, Worker], scratch: Path,
    timings: dict[tuple[str, int], Timing], status: dict[str, str], pythons: dict[str, str],
) -> dict[str, Step]:  # fmt: skip
    """Every system at this width, starting from the same weights; and each one's peak memory."""
    weights = initial_weights(args, width, x_BD)
    weights_path = scratch / f"weights-{width}.npz"
    arrays: dict[str, Any] = {name: tensor.numpy() for name, tensor in weights.items()}
    np.savez(weights_path, **arrays)
    builders = saescope_builders(args, width, weights, x_BD, scratch)
    systems: dict[str, Step] = {}
    for name in args.system_list:
        timing = timings.setdefault((name, width), Timing())
        if name not in builders and name not in workers:
            continue
        try:
            if args.memory:
                timing.peak_mb = measure_peak_memory(args, name, width, scratch / "acts.npy", weights_path, pythons)
            if name in builders:
                systems[name] = builders[name]()
            else:
                workers[name].request(cmd="build", width=width, weights=str(weights_path))
                systems[name] = worker_step(workers[name], width)
        except RuntimeError as error:
            status[name] = f"failed at width {width}: {error}"
    systems[GEMM] = gemm_step(args.batch, args.d_in, width)
    return systems


def run_width(
    args: argparse.Namespace, width: int, x_BD: torch.Tensor, workers: dict[str, Worker], scratch: Path,
    timings: dict[tuple[str, int], Timing], status: dict[str, str], pythons: dict[str, str],
) -> None:  # fmt: skip
    systems = build_systems(args, width, x_BD, workers, scratch, timings, status, pythons)
    names = list(systems)
    for index in range(args.warmup + args.steps):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, l0 = systems[name](index)
            timing = timings.setdefault((name, width), Timing())
            if index >= args.warmup:
                timing.seconds.append(seconds)
            timing.l0 = l0
        print(f"  width {width}: step {index + 1}/{args.warmup + args.steps} done", file=sys.stderr, flush=True)
    for name, worker in workers.items():
        if name in systems:
            worker.request(cmd="drop", width=width)
    if args.profile:
        profile_sparse_step(args, width, x_BD)


def profile_sparse_step(args: argparse.Namespace, width: int, x_BD: torch.Tensor) -> None:
    """Print where one saescope sparse step's time goes (torch profiler, self time per op)."""
    from torch.profiler import ProfilerActivity, profile

    step = saescope_loop(jumprelu_config(args, width, "sparse"), initial_weights(args, width, x_BD), x_BD, args.lr)
    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(1)
    events = sorted(prof.key_averages(), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in events)
    print(f"\nwhere a saescope sparse step goes at width {width} (self time, profiled step {total / 1e3:.0f} ms):")
    for event in events[:12]:
        share = event.self_cpu_time_total / total
        print(f"  {event.key[:44]:44s} {event.self_cpu_time_total / 1e3:8.1f} ms {share:6.1%}  x{event.count}")


def crossover(args: argparse.Namespace) -> None:
    """``--crossover``: dense/sparse time of loss + backward across densities and batch sizes, the
    measurement behind ``SPARSE_MAX_DENSITY`` and ``SPARSE_MIN_ELEMENTS`` (saescope.sae.sparse)."""

    def ratio(width: int, batch: int, l0: float) -> tuple[float, float, float]:
        x_BD = make_activations(batch, args.d_in, seed=0)
        sub = argparse.Namespace(**{**vars(args), "l0": l0})
        weights = initial_weights(sub, width, x_BD)
        steps: dict[str, Callable[[], float]] = {}
        for kernel in ("dense", "sparse"):
            sae = build_dictionary(jumprelu_config(args, width, kernel))
            load_into(sae, weights)

            def step(sae: SparseDictionary = sae) -> float:
                started = time.perf_counter()
                sae.loss(x_BD).total.backward()  # type: ignore[no-untyped-call]
                seconds = time.perf_counter() - started
                sae.zero_grad(set_to_none=True)
                return seconds

            steps[kernel] = step
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for index in range(1 + args.steps):
            for kernel in ("dense", "sparse") if index % 2 else ("sparse", "dense"):
                seconds = steps[kernel]()
                if index:
                    times[kernel].append(seconds)
        dense, sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
        return (
            dense * 1e3,
            sparse * 1e3,
            statistics.median(d / s for d, s in zip(times["dense"], times["sparse"], strict=True)),
        )

    print(f"loss + backward, dense vs sparse kernel (d_in {args.d_in}, {torch.get_num_threads()} threads); "
          "> 1 = sparse faster")  # fmt: skip
    width = args.width_list[0]
    print(f"\nby density (batch {args.batch}, width {width}):")
    for density in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3):
        dense, sparse, speedup = ratio(width, args.batch, density * width)
        print(f"  density {density:6.3f}  dense {dense:8.1f} ms  sparse {sparse:8.1f} ms  dense/sparse {speedup:6.2f}")
    print("\nby size (width 1024, density 0.01):")
    for batch in (4, 16, 64, 256, 1024, 4096):
        dense, sparse, speedup = ratio(1024, batch, 0.01 * 1024)
        print(f"  B*F {batch * 1024:9d}  dense {dense:8.1f} ms  sparse {sparse:8.1f} ms  dense/sparse {speedup:6.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_probe(args)
        return
    if args.crossover:
        crossover(args)
        return
    x_BD = make_activations(args.batch, args.d_in, seed=0)
    timings: dict[tuple[str, int], Timing] = {}
    print("== training-step benchmark: saescope sparse/dense vs SAELens JumpReLU and sparsify TopK ==")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (before the run)"
    )
    print(
        f"batch {args.batch}, d_in {args.d_in}, widths {args.width_list}, target L0 {args.l0}; Gaussian activations "
        f"with E|x|^2 = {float(x_BD.square().sum(-1).mean()):.3f}; {args.warmup} warm-up + "
        f"{args.steps} timed steps per system, interleaved step by step in a rotating order"
    )
    with tempfile.TemporaryDirectory(prefix="saescope-bench-train-") as scratch:
        acts_path = Path(scratch) / "acts.npy"
        np.save(acts_path, x_BD.numpy())
        workers, status, pythons = start_workers(args, acts_path)
        try:
            for width in args.width_list:
                run_width(args, width, x_BD, workers, Path(scratch), timings, status, pythons)
        finally:
            for worker in workers.values():
                worker.close()
    print(f"load average {os.getloadavg()[0]:.2f} (after the run)")
    for name, line in status.items():
        print(f"{name}: {line}")
    print_table(args, timings, status)


def _paired(reference: list[float] | None, values: list[float]) -> float:
    """Median over step indices of reference/value (steps ran back to back, under the same load)."""
    if not reference or len(reference) != len(values):
        return math.nan
    return statistics.median(r / v for r, v in zip(reference, values, strict=True))


def print_table(args: argparse.Namespace, timings: dict[tuple[str, int], Timing], status: dict[str, str]) -> None:
    columns = (("tokens/s", 10), ("ms/step", 9), ("vs SAELens", 12), ("of GEMM bound", 15), ("peak MB", 9), ("L0", 7))
    header = f"{'system':26s}{'width':>7s}" + "".join(f"{n:>{w}s}" for n, w in columns) + "  ms per timed step"
    print()
    print(header)
    print("-" * len(header))
    for width in args.width_list:
        gemm = timings[(GEMM, width)].seconds
        saelens = timings.get((SAELENS, width))
        for name in args.system_list:
            timing = timings.get((name, width))
            if timing is None or not timing.seconds:
                print(f"{name:26s}{width:7d}  {status.get(name, 'no result').splitlines()[0][:90]}")
                continue
            median = statistics.median(timing.seconds)
            versus = _paired(saelens.seconds if saelens else None, timing.seconds)
            bound = _paired(gemm, timing.seconds)
            per_step = " ".join(f"{v * 1e3:.0f}" for v in timing.seconds)
            print(
                f"{name:26s}{width:7d}{args.batch / median:10.0f}{median * 1e3:9.0f}{versus:12.2f}{bound:15.3f}"
                f"{timing.peak_mb:9.0f}{timing.l0:7.1f}  {per_step}"
            )
        gemm_median = statistics.median(gemm)
        rate = 2 * args.batch * args.d_in * width / gemm_median / 1e9
        print(
            f"{GEMM:26s}{width:7d}{args.batch / gemm_median:10.0f}{gemm_median * 1e3:9.0f}{'':12s}{1.0:15.3f}"
            f"{'':16s}  fp32 GEMM rate at {args.batch}x{args.d_in} @ {args.d_in}x{width}: {rate:.1f} GFLOP/s"
        )
    print(
        "\nvs SAELens: median over step indices of (SAELens step time / this step time), > 1 = faster.\n"
        "of GEMM bound: median over step indices of (encoder GEMM time / this step time); a step that did only the\n"
        "encoder product would score 1. saescope's loops and the Trainer use Adam(fused=True); the Trainer row is\n"
        "the real trainer step. Per-step work differs slightly: SAELens clips the gradient norm and keeps firing\n"
        "statistics; sparsify renormalises decoder rows before (not after) the update and minimises FVU."
    )


if __name__ == "__main__":
    main()
