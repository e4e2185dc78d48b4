"""JumpReLU training-step throughput: saescope against SAELens, and against this machine's matmul rate.

For d_in = 640 (Gemma 3 270M's residual width), batch 4096 and dictionary widths 4096 and 16384
(``--wide`` adds 65536), on the same activations (Gaussian, scaled so that E‖x‖² = 1, as saescope's
normalised activations are), in one run, it times:

* saescope's JumpReLU step as SPEC §2.4 writes it: ``loss`` (reconstruction + warmed-up L0 penalty),
  ``backward``, ``project_decoder_grad_``, Adam(lr 7e-5, β = (0, 0.999), ε = 1e-8), ``zero_grad``,
  ``normalize_decoder_``, with ``threshold_parameterisation="raw"``;
* saescope's trainer step (``Trainer._train_member``: the same, plus LR schedule, a finite-loss check,
  dead-latent counters and batch FVU), when ``saescope.train.trainer`` provides it;
* SAELens' JumpReLU step (``JumpReLUTrainingSAE`` driven by ``SAETrainer.step``, with the same learning
  rate, betas, threshold init 0.001, bandwidth 0.001 and L0 coefficient), run by
  ``saelens_train_step_worker.py`` in SAELens' own virtual environment (``--saelens-python``; default
  ``$SAELENS_PYTHON`` or /tmp/bench_saelens/bin/python; "not installed" when absent);
* the fp32 matmul rate at the encoder's shape (4096×640 @ 640×W). A dense JumpReLU step is about
  12·B·d·W FLOPs (three matmuls, forward and backward, for each of W_enc and W_dec), so
  achieved GFLOP/s divided by the matmul rate says how close a step is to the machine's limit.

The implementations (and the matmul) run interleaved step by step, in an order that rotates each step,
so load from other processes hits them alike; SAELens runs in a worker process that waits on a pipe
while the others step. Warm-up steps are excluded; tokens/s and ms/step are medians over the timed
steps; "vs saescope" is the median over step indices of the paired time ratio.

Set up SAELens once (torch first, so that pip keeps the CPU build)::

    python3 -m venv /tmp/bench_saelens
    /tmp/bench_saelens/bin/pip install torch==2.13.0 sae-lens

Run from the repository root::

    .venv/bin/python benchmarks/train_step.py            # widths 4096 and 16384: about 5 min on 2 cores
    .venv/bin/python benchmarks/train_step.py --quick    # width 4096, 1 warm-up + 3 steps: under 1 min
    .venv/bin/python benchmarks/train_step.py --wide     # adds width 65536 (about 10 GB of RAM)

Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, SparseDictionary, build_dictionary

DEFAULT_SAELENS_PYTHON = "/tmp/bench_saelens/bin/python"
WORKER = Path(__file__).resolve().parent / "saelens_train_step_worker.py"
SAESCOPE_LOOP = "saescope JumpReLU step"
SAESCOPE_TRAINER = "saescope Trainer step"
SAELENS = "SAELens JumpReLU step"
MATMUL = "fp32 matmul 4096x640 @ 640xW"


def dictionary_config(args: argparse.Namespace, width: int) -> DictionaryConfig:
    return DictionaryConfig(
        d_in=args.d_in,
        width=width,
        threshold_parameterisation="raw",
        threshold_init=args.threshold_init,
        bandwidth=args.bandwidth,
        l0_coefficient=args.l0_coefficient,
    )


def make_activations(batch: int, d_in: int, seed: int) -> torch.Tensor:
    """Gaussian rows scaled so that E‖x‖² = 1 (saescope trains on x / C with C = sqrt(E‖x‖²))."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, d_in, generator=generator) / d_in**0.5


# ------------------------------------------------------------------------------------------------
# saescope
# ------------------------------------------------------------------------------------------------


def saescope_loop(config: DictionaryConfig, x_BD: torch.Tensor, lr: float) -> Callable[[int], None]:
    sae: SparseDictionary = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)

    def step(index: int) -> None:
        out = sae.loss(x_BD, step=index)
        out.total.backward()  # type: ignore[no-untyped-call]
        sae.project_decoder_grad_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()

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

    def batches(
        self, batch_size: int, *, seed: int = 0, epoch: int = 0, **_: Any
    ) -> Iterator[dict[Site, torch.Tensor]]:
        yield {self._site: self._x_BD}


def saescope_trainer(
    config: DictionaryConfig, x_BD: torch.Tensor, lr: float, out_dir: Path
) -> Callable[[int], None] | str:
    """The trainer's own per-dictionary step, or a reason why it is not available."""
    try:
        from saescope.train import trainer as trainer_module

        site = Site(0, SiteKind.RES)
        spec = trainer_module.SAESpec(name="bench", site=site, dictionary=config, lr=lr)
        train_config = trainer_module.TrainConfig(total_tokens=10**9, batch_size=int(x_BD.shape[0]), progress=False)
        trainer = trainer_module.Trainer([spec], _OneBatchSource(site, x_BD), train_config, out_dir)
        member = trainer.members[0]
        train_member = trainer._train_member
    except Exception as error:  # the trainer is still being written; report rather than fail
        return f"unavailable ({type(error).__name__}: {error})"

    def step(index: int) -> None:
        train_member(member, x_BD)
        trainer.step = index + 1

    return step


# ------------------------------------------------------------------------------------------------
# SAELens (a worker process in its own venv)
# ------------------------------------------------------------------------------------------------


def find_saelens_python(explicit: str | None) -> str | None:
    candidate = explicit or os.environ.get("SAELENS_PYTHON") or DEFAULT_SAELENS_PYTHON
    return candidate if Path(candidate).is_file() and os.access(candidate, os.X_OK) else None


class SAELensWorker:
    """`saelens_train_step_worker.py` under SAELens' interpreter, driven one JSON line at a time."""

    def __init__(self, python: str, acts_path: Path, args: argparse.Namespace) -> None:
        command = [
            python,
            str(WORKER),
            *("--acts", str(acts_path), "--threads", str(torch.get_num_threads()), "--lr", str(args.lr)),
            *("--l0-coefficient", str(args.l0_coefficient), "--threshold-init", str(args.threshold_init)),
            *("--bandwidth", str(args.bandwidth)),
        ]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the worker)
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        while line := self._process.stdout.readline():
            if line.startswith("{"):
                message: dict[str, Any] = json.loads(line)
                if "error" in message:
                    raise RuntimeError(f"the SAELens worker answered: {message['error']}")
                return message
        self._stderr.seek(0)
        raise RuntimeError(f"the SAELens worker stopped (exit {self._process.wait()}):\n{self._stderr.read()[-3000:]}")

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
            self._process.wait(timeout=60)
        self._stderr.close()


# ------------------------------------------------------------------------------------------------
# Matmul rate
# ------------------------------------------------------------------------------------------------


def matmul_timer(batch: int, d_in: int, width: int) -> Callable[[int], float]:
    """Seconds of one fp32 (batch x d_in) @ (d_in x width) product, the encoder's shape (median of 3)."""
    generator = torch.Generator().manual_seed(1)
    a_BD = torch.randn(batch, d_in, generator=generator)
    b_DF = torch.randn(d_in, width, generator=generator)
    out_BF = torch.empty(batch, width)

    def measure(_index: int) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            torch.matmul(a_BD, b_DF, out=out_BF)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return measure


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 4096 only, 1 warm-up + 3 timed steps")
    parser.add_argument("--wide", action="store_true", help="also width 65536 (about 10 GB of RAM)")
    parser.add_argument("--widths", default=None, help="comma-separated widths (overrides --quick/--wide)")
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 7; quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads, here and in the worker")
    parser.add_argument(
        "--saelens-python", default=None, help=f"SAELens venv python (default {DEFAULT_SAELENS_PYTHON})"
    )
    parser.add_argument("--no-trainer", action="store_true", help="skip the saescope Trainer row")
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--threshold-init", type=float, default=0.001)
    parser.add_argument("--bandwidth", type=float, default=0.001)
    args = parser.parse_args(argv)
    if args.widths is None:
        args.widths = "4096" if args.quick else "4096,16384"
        if args.wide:
            args.widths += ",65536"
    args.width_list = [int(w) for w in args.widths.split(",") if w.strip()]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.steps = args.steps or (3 if args.quick else 7)
    return args


def timed(step: Callable[[int], None]) -> Callable[[int], float]:
    def measure(index: int) -> float:
        started = time.perf_counter()
        step(index)
        return time.perf_counter() - started

    return measure


def implementations(
    args: argparse.Namespace, width: int, x_BD: torch.Tensor, worker: SAELensWorker | None, scratch: Path
) -> tuple[dict[str, Callable[[int], float]], list[str]]:
    """name -> a function timing step `index` of that implementation at this width; and notes."""
    config = dictionary_config(args, width)
    impls = {SAESCOPE_LOOP: timed(saescope_loop(config, x_BD, args.lr))}
    notes = []
    if not args.no_trainer:
        trainer_step = saescope_trainer(config, x_BD, args.lr, scratch / f"trainer-{width}")
        if isinstance(trainer_step, str):
            notes.append(f"{SAESCOPE_TRAINER}: {trainer_step}")
        else:
            impls[SAESCOPE_TRAINER] = timed(trainer_step)
    if worker is not None:
        worker.request(cmd="build", width=width)
        impls[SAELENS] = lambda _index: float(worker.request(cmd="step", width=width)["seconds"])
    impls[MATMUL] = matmul_timer(args.batch, args.d_in, width)
    return impls, notes


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x_BD = make_activations(args.batch, args.d_in, seed=0)
    saelens_python = find_saelens_python(args.saelens_python)
    times: dict[tuple[str, int], list[float]] = {}
    notes: list[str] = []

    print("== JumpReLU training-step benchmark ==")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"batch {args.batch}, d_in {args.d_in}, widths {args.width_list}; activations: Gaussian, E|x|^2 = "
        f"{float(x_BD.square().sum(-1).mean()):.3f}; {args.warmup} warm-up + {args.steps} timed steps, "
        "implementations interleaved step by step (order rotating)"
    )
    with tempfile.TemporaryDirectory(prefix="saescope-bench-train-") as scratch:
        acts_path = Path(scratch) / "acts.npy"
        np.save(acts_path, x_BD.numpy())
        worker: SAELensWorker | None = None
        if saelens_python is None:
            saelens_info = (
                f"not installed (looked for {args.saelens_python or DEFAULT_SAELENS_PYTHON}, $SAELENS_PYTHON)"
            )
        else:
            try:
                worker = SAELensWorker(saelens_python, acts_path, args)
                info = worker.info
                saelens_info = f"sae-lens {info['sae_lens']}, torch {info['torch']}, {info['threads']} threads"
            except RuntimeError as error:
                saelens_info = f"failed to start: {error}"
        try:
            for width in args.width_list:
                impls, width_notes = implementations(args, width, x_BD, worker, Path(scratch))
                notes += [note for note in width_notes if note not in notes]
                names = list(impls)
                for index in range(args.warmup + args.steps):
                    shift = index % len(names)
                    for name in names[shift:] + names[:shift]:
                        seconds = impls[name](index)
                        if index >= args.warmup:
                            times.setdefault((name, width), []).append(seconds)
                del impls
                if worker is not None:
                    worker.request(cmd="drop", width=width)
        finally:
            if worker is not None:
                worker.close()
    print(f"SAELens: {saelens_info}")
    for note in notes:
        print(f"note: {note}")
    print_table(args, times, saelens_info)


def print_table(args: argparse.Namespace, times: dict[tuple[str, int], list[float]], saelens_info: str) -> None:
    columns = ("tokens/s", 10), ("ms/step", 9), ("best ms", 9), ("vs saescope", 13), ("GFLOP/s", 9), ("of matmul", 10)
    header = f"{'implementation':26s}{'width':>7s}" + "".join(f"{n:>{w}s}" for n, w in columns) + "  ms per timed step"
    print()
    print(header)
    print("-" * len(header))
    for width in args.width_list:
        flops = 12 * args.batch * args.d_in * width
        matmul_rate = 2 * args.batch * args.d_in * width / statistics.median(times[(MATMUL, width)]) / 1e9
        reference = times.get((SAESCOPE_LOOP, width))
        for name in (SAESCOPE_LOOP, SAESCOPE_TRAINER, SAELENS):
            values = times.get((name, width))
            if values is None:
                if name == SAELENS:
                    print(f"{name:26s}{width:7d}  {saelens_info.splitlines()[0]}")
                continue
            median = statistics.median(values)
            # Paired by step index: the implementations ran back to back, under the same load.
            versus = statistics.median(r / v for r, v in zip(reference, values, strict=True)) if reference else math.nan
            achieved = flops / median / 1e9
            per_step = " ".join(f"{v * 1e3:.0f}" for v in values)
            print(
                f"{name:26s}{width:7d}{args.batch / median:10.0f}{median * 1e3:9.0f}{min(values) * 1e3:9.0f}"
                f"{versus:13.3f}{achieved:9.1f}{achieved / matmul_rate:10.3f}  {per_step}"
            )
        print(f"{MATMUL:26s}{width:7d}{'':50s}{matmul_rate:9.1f}{1.0:10.3f}")
    print(
        "\nvs saescope: median over step indices of (saescope step time / this step time), > 1 = faster than "
        "saescope.\nFLOPs per step taken as 12*B*d*W (dense forward+backward of W_enc and W_dec); 'of matmul' = "
        "achieved GFLOP/s / the fp32 matmul rate at the encoder's shape, timed in the same rotation."
    )
    print(
        "Per-step work differs slightly: saescope projects decoder gradients and renormalises decoder rows; "
        "SAELens clips the gradient norm, keeps firing statistics and steps its LR and L0 schedulers."
    )


if __name__ == "__main__":
    main()
