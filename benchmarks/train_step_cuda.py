"""GPU training-step check and benchmark: saescope's sparse vs dense step kernel, JumpReLU and TopK.

For d_in 640, batch 4096 and each ``--widths`` entry, on Gaussian activations scaled so that E‖x‖² = 1
(as ``benchmarks/train_step.py`` makes them) and from saescope's initial dictionary (W_enc = W_decᵀ, unit
decoder rows) with each JumpReLU threshold (``threshold_parameterisation="raw"``) set to the quantile of
its latent's pre-activations on the batch that makes it fire on L0/W of the tokens (so L0 ≈ ``--l0``);
TopK uses k = ``--l0``:

1. **agreement**: one ``loss`` + ``backward`` with ``step_kernel="sparse"`` and with ``"dense"`` (the
   autograd reference) from the same weights, at a step past the λ warm-up (so the L0 penalty and its θ
   gradient are on); reported as max|sparse − dense| / max|dense| for the loss and every gradient;
2. **throughput**: per kernel, a full method §2.4 step (``loss``, ``backward``, ``project_decoder_grad_``,
   ``Adam(fused=True).step``, ``zero_grad``, ``normalize_decoder_``) timed with CUDA events
   (``--warmup`` untimed + ``--steps`` timed, median), and its peak GPU memory
   (``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before the kernel's
   dictionary was built: parameters, gradients, Adam state, the sparse kernel's scratch, transients);
3. **bound**: one fp32 (batch × d_in) @ (d_in × width) GEMM into a preallocated output, the encoder's
   shape, with TF32 off (the whole run keeps ``torch.backends.cuda.matmul.allow_tf32 = False``); "of
   GEMM bound" is that GEMM's time / the step's time, i.e. the fraction of the throughput a step that
   did only the unavoidable encoder product would reach. A TF32 GEMM is timed too, for reference.

Run from the repository root (only ``saescope.sae`` is imported, which needs just torch)::

    PYTHONPATH=src python3 benchmarks/train_step_cuda.py                      # widths 16384, 65536
    PYTHONPATH=src python3 benchmarks/train_step_cuda.py --profile            # + where a sparse step goes
    PYTHONPATH=src python3 benchmarks/train_step_cuda.py --device cpu --widths 4096 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from saescope.sae import DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary
from saescope.sae.sparse import release_scratch

KERNELS = ("sparse", "dense")


@dataclass
class Result:
    ms: list[float] = field(default_factory=list)
    peak_mb: float = math.nan
    l0: float = math.nan


# ------------------------------------------------------------------------------------------------
# Inputs and dictionaries
# ------------------------------------------------------------------------------------------------


def make_activations(batch: int, d_in: int, seed: int, device: torch.device) -> torch.Tensor:
    """Gaussian rows scaled so that E‖x‖² = 1 (drawn on the CPU, so every device sees the same batch)."""
    generator = torch.Generator().manual_seed(seed)
    x_BD: torch.Tensor = (torch.randn(batch, d_in, generator=generator) / d_in**0.5).to(device)
    return x_BD


def config_for(args: argparse.Namespace, arch: str, width: int, kernel: str) -> DictionaryConfig:
    if arch == "jumprelu":
        return DictionaryConfig(
            d_in=args.d_in, width=width, threshold_parameterisation="raw", bandwidth=args.bandwidth,
            l0_coefficient=args.l0_coefficient, step_kernel=kernel,
        )  # fmt: skip
    return DictionaryConfig(d_in=args.d_in, width=width, architecture="topk", k=args.l0, step_kernel=kernel)


@torch.no_grad()
def initial_weights(args: argparse.Namespace, width: int, x_BD: torch.Tensor) -> dict[str, torch.Tensor]:
    """saescope's initial JumpReLU (seed 0) with thresholds that make each latent fire on L0/W of the batch."""
    sae = build_dictionary(config_for(args, "jumprelu", width, "dense"), generator=torch.Generator().manual_seed(0))
    sae.to(x_BD.device)
    assert isinstance(sae, JumpReLU)
    pre_BF = sae.pre_activations(x_BD)
    rank = max(1, round(x_BD.shape[0] * (1.0 - args.l0 / width)))
    theta_F = pre_BF.kthvalue(rank, dim=0).values.clamp_min(1e-3)
    del pre_BF
    parameters = {"W_enc": sae.W_enc_DF, "b_enc": sae.b_enc_F, "W_dec": sae.W_dec_FD, "b_dec": sae.b_dec_D}
    return {**{name: value.detach().clone() for name, value in parameters.items()}, "threshold": theta_F}


@torch.no_grad()
def build(config: DictionaryConfig, weights: dict[str, torch.Tensor], device: torch.device) -> SparseDictionary:
    sae = build_dictionary(config).to(device)
    sae.W_enc_DF.copy_(weights["W_enc"])
    sae.b_enc_F.copy_(weights["b_enc"])
    sae.W_dec_FD.copy_(weights["W_dec"])
    sae.b_dec_D.copy_(weights["b_dec"])
    if isinstance(sae, JumpReLU):
        sae.set_threshold_(weights["threshold"])
    return sae


def parameter_label(name: str) -> str:
    return {"raw_threshold_F": "theta"}.get(name, name.removesuffix("_DF").removesuffix("_FD").removesuffix("_F")
                                               .removesuffix("_D"))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Timing helpers (CUDA events on a GPU, perf_counter on the CPU)
# ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(device: torch.device, fn: Callable[[], object]) -> float:
    """Milliseconds ``fn`` takes, launch to completion."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def fresh_memory(device: torch.device) -> float:
    """Free what can be freed, reset the peak counter; bytes still allocated."""
    gc.collect()
    release_scratch()
    if device.type != "cuda":
        return math.nan
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return float(torch.cuda.memory_allocated(device))


# ------------------------------------------------------------------------------------------------
# 1. Agreement of the two kernels
# ------------------------------------------------------------------------------------------------


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max|value − reference| / max|reference| (float64)."""
    value, reference = value.double(), reference.double()
    scale = float(reference.abs().max())
    return float((value - reference).abs().max()) / (scale if scale > 0 else 1.0)


def check_agreement(
    args: argparse.Namespace, arch: str, width: int, weights: dict[str, torch.Tensor], x_BD: torch.Tensor
) -> dict[str, float]:
    """Loss and gradient of every parameter under both kernels; relative errors of sparse vs dense."""
    step = config_for(args, arch, width, "dense").lambda_warmup_steps  # λ fully warmed up: penalty on
    outputs: dict[str, tuple[float, float, dict[str, torch.Tensor]]] = {}
    for kernel in KERNELS:
        sae = build(config_for(args, arch, width, kernel), weights, x_BD.device)
        assert sae.uses_sparse_step(x_BD) == (kernel == "sparse")
        out = sae.loss(x_BD, step=step)
        out.total.backward()  # type: ignore[no-untyped-call]
        grads = {parameter_label(name): p.grad.detach().clone() for name, p in sae.named_parameters()
                 if p.grad is not None}  # fmt: skip
        outputs[kernel] = (float(out.total.detach()), float(out.l0), grads)
        del sae, out
        release_scratch()
    loss_s, l0_s, grads_s = outputs["sparse"]
    loss_d, l0_d, grads_d = outputs["dense"]
    errors = {"loss": abs(loss_s - loss_d) / abs(loss_d), "L0 sparse": l0_s, "L0 dense": l0_d}
    if set(grads_s) != set(grads_d):
        raise RuntimeError(f"{arch} {width}: gradients of {sorted(grads_s)} (sparse) vs {sorted(grads_d)} (dense)")
    for name in grads_d:
        errors[name] = relative_error(grads_s[name], grads_d[name])
    return errors


# ------------------------------------------------------------------------------------------------
# 2. Throughput and memory of one kernel; 3. the GEMM bound
# ------------------------------------------------------------------------------------------------


def time_kernel(
    args: argparse.Namespace, config: DictionaryConfig, weights: dict[str, torch.Tensor], x_BD: torch.Tensor
) -> Result:
    device = x_BD.device
    result = Result()
    baseline = fresh_memory(device)
    sae = build(config, weights, device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8, fused=True)

    last_l0: list[torch.Tensor] = []

    def step(index: int) -> None:
        out = sae.loss(x_BD, step=index)
        out.total.backward()  # type: ignore[no-untyped-call]
        sae.project_decoder_grad_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        last_l0[:] = [out.l0]  # read after the timer stops (float() of a CUDA tensor is a sync)

    for index in range(args.warmup):
        step(index)
    for index in range(args.warmup, args.warmup + args.steps):
        result.ms.append(timed_ms(device, lambda index=index: step(index)))  # type: ignore[misc]
        result.l0 = float(last_l0[0])
    if device.type == "cuda":
        result.peak_mb = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    return result  # the dictionary and optimiser are freed here (the next fresh_memory collects them)


def time_gemm(args: argparse.Namespace, width: int, device: torch.device, tf32: bool) -> list[float]:
    """ms of one fp32 (batch × d_in) @ (d_in × width) product into a preallocated output."""
    generator = torch.Generator().manual_seed(1)
    a_BD = torch.randn(args.batch, args.d_in, generator=generator).to(device)
    b_DF = torch.randn(args.d_in, width, generator=generator).to(device)
    out_BF = torch.empty(args.batch, width, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(max(1, args.warmup)):
            torch.matmul(a_BD, b_DF, out=out_BF)
        return [timed_ms(device, lambda: torch.matmul(a_BD, b_DF, out=out_BF)) for _ in range(args.steps)]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def profile_sparse_step(
    args: argparse.Namespace, arch: str, width: int, weights: dict[str, torch.Tensor], x_BD: torch.Tensor
) -> None:
    """Where one sparse step's time goes (torch profiler, self device time per op)."""
    from torch.profiler import ProfilerActivity, profile

    device = x_BD.device
    sae = build(config_for(args, arch, width, "sparse"), weights, device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.0, 0.999), eps=1e-8, fused=True)

    def step() -> None:
        out = sae.loss(x_BD)
        out.total.backward()  # type: ignore[no-untyped-call]
        sae.project_decoder_grad_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()

    step()
    sync(device)
    wall_ms = timed_ms(device, step)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)

    def self_time(event: object) -> float:
        if device.type != "cuda":
            return float(getattr(event, "self_cpu_time_total", 0.0))
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

    # aten ops only: on a GPU the kernels also appear as their own events, with the same device time
    aten = [event for event in prof.key_averages() if event.key.startswith("aten::")]
    events = sorted(aten, key=lambda event: -self_time(event))
    total = sum(self_time(event) for event in events)
    kind = "device" if device.type == "cuda" else "cpu"
    print(
        f"\nwhere a {arch} sparse step goes at width {width}: unprofiled step {wall_ms:.2f} ms; profiled, "
        f"sum of self {kind} time {total / 1e3:.2f} ms (the rest is {kind} idle: launches, host syncs):"
    )
    for event in events[:14]:
        if self_time(event) <= 0:
            break
        print(f"  {event.key[:60]:60s} {self_time(event) / 1e3:8.3f} ms {self_time(event) / total:6.1%}"
              f"  x{event.count}")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--widths", default="16384,65536", help="comma-separated dictionary widths")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--l0", type=int, default=50, help="target L0 (JumpReLU thresholds) and TopK k")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kernel (and GEMM repetitions)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per kernel")
    parser.add_argument("--archs", default="jumprelu,topk", help="comma-separated subset of jumprelu,topk")
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--bandwidth", type=float, default=0.001)
    parser.add_argument("--profile", action="store_true", help="also profile one sparse step per arch and width")
    args = parser.parse_args(argv)
    args.width_list = [int(w) for w in args.widths.split(",") if w.strip()]
    args.arch_list = [a for a in args.archs.split(",") if a.strip()]
    if unknown := sorted(set(args.arch_list) - {"jumprelu", "topk"}):
        parser.error(f"unknown --archs {unknown}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available (use --device cpu)")
    torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32 everywhere (also torch's default)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"none (device {device})"
    print("== saescope training step on one device: sparse vs dense kernel, JumpReLU and TopK ==")
    print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}")
    print(f"allow_tf32 (matmul) {torch.backends.cuda.matmul.allow_tf32}, float32 matmul precision "
          f"{torch.get_float32_matmul_precision()}, torch threads {torch.get_num_threads()}")  # fmt: skip
    x_BD = make_activations(args.batch, args.d_in, seed=0, device=device)
    print(f"batch {args.batch}, d_in {args.d_in}, widths {args.width_list}, target L0 / k {args.l0}; Gaussian "
          f"activations with E|x|^2 = {float(x_BD.square().sum(-1).mean()):.3f}; {args.warmup} warm-up + "
          f"{args.steps} timed steps per kernel (median reported)")  # fmt: skip

    checks: dict[tuple[str, int], dict[str, float]] = {}
    results: dict[tuple[str, int, str], Result] = {}
    gemms: dict[int, tuple[float, float]] = {}
    failures: list[str] = []

    def attempt(what: str, fn: Callable[..., object], *fn_args: object) -> object | None:
        """Run one measurement; a failure is reported (and its memory freed) instead of ending the run."""
        try:
            return fn(*fn_args)
        except Exception:  # one failing kernel must not cost the other measurements
            failures.append(f"{what}:\n{traceback.format_exc(limit=6)}")
            print(f"  FAILED: {what} (traceback at the end)", file=sys.stderr, flush=True)
            fresh_memory(device)
            return None

    for width in args.width_list:
        weights = initial_weights(args, width, x_BD)
        for arch in args.arch_list:
            errors = attempt(f"agreement {arch} {width}", check_agreement, args, arch, width, weights, x_BD)
            if isinstance(errors, dict):
                checks[(arch, width)] = errors
            for kernel in KERNELS:
                config = config_for(args, arch, width, kernel)
                result = attempt(f"timing {arch} {width} {kernel}", time_kernel, args, config, weights, x_BD)
                if isinstance(result, Result):
                    results[(arch, width, kernel)] = result
                    print(f"  {arch} width {width} {kernel}: {statistics.median(result.ms):.2f} ms/step",
                          file=sys.stderr, flush=True)  # fmt: skip
        fp32 = statistics.median(time_gemm(args, width, device, tf32=False))
        tf32 = statistics.median(time_gemm(args, width, device, tf32=True)) if device.type == "cuda" else math.nan
        gemms[width] = (fp32, tf32)
        del weights
        fresh_memory(device)
    print_tables(args, checks, results, gemms, device)
    if args.profile:
        for width in args.width_list:
            weights = initial_weights(args, width, x_BD)
            for arch in args.arch_list:
                attempt(f"profile {arch} {width}", profile_sparse_step, args, arch, width, weights, x_BD)
            del weights
            fresh_memory(device)
    if failures:
        print(f"\n{len(failures)} measurement(s) failed:")
        for failure in failures:
            print(failure)
        sys.exit(1)


def print_tables(
    args: argparse.Namespace,
    checks: dict[tuple[str, int], dict[str, float]],
    results: dict[tuple[str, int, str], Result],
    gemms: dict[int, tuple[float, float]],
    device: torch.device,
) -> None:
    names = ["loss", "W_enc", "b_enc", "W_dec", "b_dec", "theta"]
    print(
        "\n### Agreement: sparse vs dense kernel, max|sparse - dense| / max|dense| (one loss + backward, λ warmed up)\n"
    )
    print("| arch | width | L0 sparse | L0 dense | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(names))
    for (arch, width), errors in checks.items():
        cells = [f"{errors[n]:.1e}" if n in errors else "-" for n in names]
        print(
            f"| {arch} | {width} | {errors['L0 sparse']:.2f} | {errors['L0 dense']:.2f} | " + " | ".join(cells) + " |"
        )

    print(f"\n### Training step (loss + backward + decoder projection + fused Adam + renormalisation), {device}\n")
    print(
        "| arch | width | kernel | ms/step (median) | min–max ms | tokens/s | dense/sparse | of GEMM bound "
        "| peak MB | L0 |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.width_list:
        gemm_ms, tf32_ms = gemms[width]
        for arch in args.arch_list:
            dense = results.get((arch, width, "dense"))
            dense_ms = statistics.median(dense.ms) if dense else math.nan
            for kernel in KERNELS:
                r = results.get((arch, width, kernel))
                if r is None:
                    print(f"| {arch} | {width} | {kernel} | failed (see below) | | | | | | |")
                    continue
                ms = statistics.median(r.ms)
                ratio = f"{dense_ms / ms:.2f}" if kernel == "sparse" and dense else ""
                peak = "-" if math.isnan(r.peak_mb) else f"{r.peak_mb:,.0f}"
                spread, rate = f"{min(r.ms):.2f}–{max(r.ms):.2f}", args.batch / ms * 1e3
                print(f"| {arch} | {width} | {kernel} | {ms:.2f} | {spread} | "
                      f"{rate:,.0f} | {ratio} | {gemm_ms / ms:.3f} | {peak} | {r.l0:.1f} |")  # fmt: skip
        flops = 2 * args.batch * args.d_in * width
        shape = f"{args.batch}x{args.d_in} @ {args.d_in}x{width}"
        print(f"| fp32 GEMM {shape} (TF32 off) | {width} | - | {gemm_ms:.3f} | "
              f"| {args.batch / gemm_ms * 1e3:,.0f} | | 1.000 | | {flops / gemm_ms / 1e9:.1f} TFLOP/s |")  # fmt: skip
        if not math.isnan(tf32_ms):
            tokens, rate = args.batch / tf32_ms * 1e3, flops / tf32_ms / 1e9
            print(f"| (reference) same GEMM, TF32 on | {width} | - | {tf32_ms:.3f} | "
                  f"| {tokens:,.0f} | | {gemm_ms / tf32_ms:.3f} | | {rate:.1f} TFLOP/s |")  # fmt: skip
    print(
        "\ndense/sparse: dense step time / sparse step time (> 1: sparse faster). of GEMM bound: one fp32 encoder "
        "GEMM's time / the step's time.\npeak MB: max_memory_allocated during build + all steps, minus what was "
        "allocated before (parameters, grads, Adam state, scratch, transients)."
    )


if __name__ == "__main__":
    main()
