"""Wide dictionaries: what one JumpReLU SAE costs per step, and how much memory it holds, at widths 16k-262k.

For d_in 640 (Gemma 3 270M's residual width) and each width (default 16,384, 65,536 and 262,144), one JumpReLU
SAE trains through saescope's own trainer (`saescope.train.Trainer`, the public API `saescope train` and
`saescope run` use) with the default `saescope` recipe and the sparse step (``step_kernel="sparse"``), on
Gaussian activations (E‖x‖² = 1 before the trainer's own scaling): this measures cost, not quality. Each width
runs in a fresh process, so that its peak resident memory is its own:

* **s/step** and **tokens/s**: the median over the timed steps (after the warm-up steps) of the time between two
  batches the trainer asks for, i.e. one whole trainer step (the loss, backward, Adam, the decoder
  normalisation and the recipe's per-step elements: θ controller, revival, firing-rate cap);
* **peak after the steps**: the process's maximum resident set size (``ru_maxrss``) when the trainer asks for
  the batch after the last timed step (the initialisation and the steps), and **peak of the run**: the same at
  the end of `Trainer.run` (the checkpoint, the recipe's decoder refit where the width allows it, and the
  saving of the dictionary);
* **planner estimate**: what `saescope.train.memory` estimates for the same dictionary and batch (no model, no
  activation stream), and the ratio measured / estimated, with the measured figure taken above the resident
  memory the process had before the dictionary was built (Python, torch: what the planner's headroom is for);
* **GEMM rate** and **of GEMM bound**: the float32 rate of ``torch.matmul`` in the encoder's shape (batch × d_in
  @ d_in × width), measured in the same process just before training, and the fraction of a step that one such
  product takes (1.0 would be a step that does nothing but the unavoidable encoder product).

Then the default suite at width 16,384: the planner's estimate for ``saescope run`` (the ``default`` preset
with ``--widths 16384``) and whether it is refused here, with what the refusal suggests.

Run from the repository root. The steps should run alone: ``--pause-pid PID`` stops that process (SIGSTOP) for
the GEMM measurement and the timed steps of each width and resumes it (SIGCONT) right after, also on error::

    .venv/bin/python benchmarks/wide_dictionaries.py --out runs/wide-dictionaries.json
    .venv/bin/python benchmarks/wide_dictionaries.py --widths 16384 --steps 2   # a quick look

Other processes on the machine slow the steps; the script records the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from saescope.models.sites import Site, SiteKind
from saescope.pipeline import run_memory_estimate
from saescope.train import SAESpec, Trainer
from saescope.train.memory import (
    GIB,
    InsufficientMemoryError,
    check_fits,
    estimate_training_memory,
    host_available_bytes,
)
from saescope.train.recipes import SAESCOPE
from saescope.train.specs import dictionary_specs

SITE = Site(6, SiteKind.RES)
KIB = 1024


# ------------------------------------------------------------------------------------------------
# One width, in its own process
# ------------------------------------------------------------------------------------------------


class TimedGaussianSource:
    """One site of Gaussian activations (E‖x‖² = 1), the same batches every epoch; records when each batch is
    asked for, and stops the paused process's clock around the timed steps."""

    def __init__(self, d_in: int, n_batches: int, on_batch: Any) -> None:
        self._d_in, self._n_batches, self._on_batch = d_in, n_batches, on_batch

    @property
    def sites(self) -> list[Site]:
        return [SITE]

    @property
    def widths(self) -> dict[Site, int]:
        return {SITE: self._d_in}

    @property
    def norm_scales(self) -> dict[Site, float]:
        return {SITE: 1.0}

    def batches(
        self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0
    ) -> Iterator[dict[Site, torch.Tensor]]:
        for index in range(skip_batches, self._n_batches):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            x_BD = torch.randn(batch_size, self._d_in, generator=generator) / math.sqrt(self._d_in)
            self._on_batch(epoch, index)
            yield {SITE: x_BD}


def wide_spec(d_in: int, width: int, target_l0: float) -> SAESpec:
    """The default recipe's JumpReLU SAE of this width, on the sparse step."""
    (spec,) = dictionary_specs([SITE], {SITE: d_in}, [width], ["jumprelu"], [target_l0], SAESCOPE)
    return dataclasses.replace(spec, dictionary=dataclasses.replace(spec.dictionary, step_kernel="sparse"))


def max_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def current_rss_bytes() -> int:
    """This process's resident set size now (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    return max_rss_bytes()


def gemm_seconds(batch: int, d_in: int, width: int, repeats: int = 3) -> float:
    """Best time of one float32 (batch × d_in) @ (d_in × width) product into a preallocated output."""
    generator = torch.Generator().manual_seed(1)
    a_BD = torch.randn(batch, d_in, generator=generator)
    b_DF = torch.randn(d_in, width, generator=generator)
    out_BF = torch.empty(batch, width)
    torch.matmul(a_BD, b_DF, out=out_BF)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a_BD, b_DF, out=out_BF)
        times.append(time.perf_counter() - started)
    return min(times)


def signal_process(pid: int | None, signum: signal.Signals) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def measure_width(args: argparse.Namespace) -> dict[str, Any]:
    """Train one SAE of width ``args.child`` for warm-up + timed (+ 1) steps; its times, peaks and estimate."""
    width, batch = args.child, args.batch
    baseline_rss = current_rss_bytes()
    spec = wide_spec(args.d_in, width, args.target_l0)
    total_steps = args.warmup + args.steps + 1  # the batch after the last timed step closes its timing
    config = SAESCOPE.train_config(
        total_tokens=total_steps * batch, batch_size=batch, seed=0, progress=False,
        checkpoint_every_steps=total_steps,
    )  # fmt: skip
    estimate = estimate_training_memory(
        [spec], {SITE: args.d_in}, batch_size=batch, model_bytes=0, stream_buffer=0,
        decoder_refit=config.decoder_refit_tokens > 0,
    )  # fmt: skip
    asked_at: list[float] = []
    peak_after_steps: list[int] = []
    paused = {"now": False}

    def on_batch(epoch: int, index: int) -> None:
        if epoch != 0 or len(asked_at) >= total_steps:  # the decoder refit's pass: not a training step
            return
        asked_at.append(time.perf_counter())
        if index == args.warmup + args.steps:  # the last timed step has finished
            peak_after_steps.append(max_rss_bytes())
            if paused["now"]:
                signal_process(args.pause_pid, signal.SIGCONT)
                paused["now"] = False

    source = TimedGaussianSource(args.d_in, total_steps, on_batch)
    with tempfile.TemporaryDirectory(prefix="wide-dictionaries-") as scratch:
        trainer = Trainer([spec], source, config, Path(scratch))
        signal_process(args.pause_pid, signal.SIGSTOP)
        paused["now"] = args.pause_pid is not None
        try:
            gemm = gemm_seconds(batch, args.d_in, width)
            trained = trainer.run()
        finally:
            if paused["now"]:
                signal_process(args.pause_pid, signal.SIGCONT)
    step_seconds = [later - earlier for earlier, later in itertools.pairwise(asked_at)]
    timed = step_seconds[args.warmup : args.warmup + args.steps]
    seconds = statistics.median(timed)
    return {
        "width": width,
        "d_in": args.d_in,
        "batch": batch,
        "target_l0": args.target_l0,
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "step_seconds": step_seconds,
        "seconds_per_step": seconds,
        "tokens_per_second": batch / seconds,
        "gemm_seconds": gemm,
        "gemm_flops_per_second": 2 * batch * args.d_in * width / gemm,
        "fraction_of_gemm_bound": gemm / seconds,
        "baseline_rss_bytes": baseline_rss,
        "peak_after_steps_bytes": peak_after_steps[0] if peak_after_steps else None,
        "peak_of_run_bytes": max_rss_bytes(),
        "estimate_bytes": estimate.per_process,
        "estimate": estimate.describe(),
        "decoder_refit_ran": "refit_fvu" in trained[0].final_metrics,
        "final_l0": trained[0].final_metrics.get("l0"),
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------
# The parent: every width in a fresh process, then the default suite's plan
# ------------------------------------------------------------------------------------------------


def run_width(args: argparse.Namespace, width: int) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", str(width), "--d-in", str(args.d_in), "--batch", str(args.batch),
        "--warmup", str(args.warmup), "--steps", str(args.steps), "--target-l0", str(args.target_l0),
    ]  # fmt: skip
    if args.pause_pid is not None:
        command += ["--pause-pid", str(args.pause_pid)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        signal_process(args.pause_pid, signal.SIGCONT)  # whatever became of the child
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"width": width, "error": f"exit {result.returncode}: {result.stderr[-2000:]}"}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def default_suite_plan(width: int) -> dict[str, Any]:
    """The planner's estimate for `saescope run` (default preset, --widths `width`) and its verdict here."""
    from saescope.pipeline import load_preset

    config = load_preset("default", {"widths": str(width)})
    estimate = run_memory_estimate(config)
    if estimate is None:
        return {"width": width, "error": "the model's configuration could not be read"}
    available = host_available_bytes()
    try:
        check_fits(estimate, available, where="this machine", skip_option="--skip-memory-check")
        verdict = "fits"
    except InsufficientMemoryError as refusal:
        verdict = f"refused: {refusal}"
    return {
        "width": width, "estimate_bytes": estimate.per_process, "estimate": estimate.describe(),
        "available_bytes": available, "verdict": verdict,
    }  # fmt: skip


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    return {
        "cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "memory_total_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB,
        "python": platform.python_version(),
    }  # fmt: skip


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text(encoding="ascii", errors="replace").splitlines() if path.is_file() else []


def gib(size: float | None) -> str:
    return "–" if size is None else f"{size / GIB:.2f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| width | s/step | tokens/s | GEMM GFLOP/s | of GEMM bound | peak after the steps GiB | peak of the run "
        "GiB | above baseline GiB | planner estimate GiB | measured / estimated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['width']:,} | failed: {row['error'].splitlines()[-1]} |")
            continue
        above = row["peak_of_run_bytes"] - row["baseline_rss_bytes"]
        lines.append(
            f"| {row['width']:,} | {row['seconds_per_step']:.3f} | {row['tokens_per_second']:,.0f} | "
            f"{row['gemm_flops_per_second'] / 1e9:.1f} | {row['fraction_of_gemm_bound']:.2f} | "
            f"{gib(row['peak_after_steps_bytes'])} | {gib(row['peak_of_run_bytes'])} | {gib(above)} | "
            f"{gib(row['estimate_bytes'])} | {above / row['estimate_bytes']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="16384,65536,262144", help="comma-separated dictionary widths")
    parser.add_argument("--d-in", type=int, default=640, help="activation width (Gemma 3 270M: 640)")
    parser.add_argument("--batch", type=int, default=1024, help="tokens per step (the default preset's)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--target-l0", type=float, default=60.0)
    parser.add_argument("--suite-width", type=int, default=16384, help="width of the default suite's plan (0: skip)")
    parser.add_argument("--pause-pid", type=int, default=None, help="SIGSTOP this process during the timed steps")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: one width
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_width(args)))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = load_average()
    rows = []
    for width in (int(w) for w in args.widths.split(",") if w.strip()):
        rows.append(run_width(args, width))
        print(f"width {width:,}: done (load average {load_average()})", file=sys.stderr)
    suite = default_suite_plan(args.suite_width) if args.suite_width else None
    results = {
        "started": started, "command": " ".join(sys.argv), "machine": machine(),
        "load_average_before": load_before, "load_average_after": load_average(), "widths": rows, "suite": suite,
    }  # fmt: skip
    print(f"{started}; {results['machine']}; load average before {load_before}, after {results['load_average_after']}")
    print(markdown(rows))
    if suite is not None:
        print(f"\nDefault suite at width {suite['width']:,}: {suite.get('estimate', '')}\n{suite.get('verdict', '')}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
