"""Train many sparse dictionaries at once from one activation stream (method §2.4, §2.5).

Every batch of token activations is read once and fed to every dictionary that wants its site; each
dictionary has its own Adam optimiser, schedules and (optionally) target-L0 controller. A step normalises
by the site's scale C, computes the loss with warmed-up λ, backpropagates, projects decoder gradients
orthogonal to the rows, takes an Adam step and renormalises decoder rows. The recipe elements that the
settings switch on (`saescope.train.elements`) act at fixed points around it.

Checkpoints (`saescope.train.checkpoint`) let a resumed run give bit-identical weights to an uninterrupted
one. Checkpoints and saved dictionaries record their SHA-256 beside them (``<name>.sha256``), checked when read.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import json
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saescope.atomic import atomic_write_checksummed, atomic_write_json, atomic_write_text
from saescope.checks import check_unique_names
from saescope.data.activations import ActivationSource, SiteBatch
from saescope.dictionaries.folder import SAES, write_dictionary_folder
from saescope.dictionaries.sites import DictionarySites, HoldsSites
from saescope.models.sites import Site
from saescope.sae import AnyDictionary, SparseDictionary, build_any_dictionary, single_layer
from saescope.train.checkpoint import (
    CHECKPOINT,
    checkpoint_state,
    read_checkpoint,
    restore_checkpoint,
    start_over_hint,
)
from saescope.train.elements import Member, build_elements
from saescope.train.init_from import read_parent, unfold_into_
from saescope.train.schedules import TargetL0Controller, learning_rate
from saescope.train.settings import SAESpec, TrainConfig

METRICS = "metrics.jsonl"


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class BadActivationsError(TrainingDivergedError):
    """The training data, not a dictionary, holds a non-finite value (or one too large for float32 arithmetic);
    the last good checkpoint is kept."""


#: A normalised row whose squared norm exceeds this overflows float32, the dtype dictionaries compute in.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _first_non_finite(x_BD: torch.Tensor) -> tuple[int, int, float] | None:
    """(row, column, value) of the first non-finite entry of a batch, or None."""
    bad = (~torch.isfinite(x_BD)).nonzero()
    if bad.shape[0] == 0:
        return None
    row, column = (int(i) for i in bad[0])
    return row, column, float(x_BD[row, column])


@dataclass(frozen=True)
class TrainedDictionary(HoldsSites):
    """What a finished run returns for each dictionary (its folder is read back as a `TrainedSAE`)."""

    name: str
    sites: DictionarySites
    sae: AnyDictionary
    norm_scale: float
    folder: Path
    final_metrics: dict[str, float]


def return_freed_memory() -> None:
    """Give memory freed by Python and torch back to the operating system where the C library allows (glibc's
    malloc_trim; elsewhere nothing). Freed tensors of a closed activation stream otherwise stay in the allocator's
    arenas, resident, while the next pass over the data allocates its own (see docs/results/memory.md)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _batch_fvu(y_BD: torch.Tensor, y_hat_BD: torch.Tensor) -> float:
    """Fraction of variance unexplained of the target on this batch (variance about the batch mean)."""
    residual = (y_BD - y_hat_BD).double().square().sum()
    variance = (y_BD - y_BD.mean(0)).double().square().sum()
    return float(residual / variance.clamp_min(1e-30))


class Trainer:
    """Trains every `SAESpec` on batches from one `ActivationSource`, checkpointing into `out_dir`.

    The recipe elements that `config` switches on (`saescope.train.elements`) act at fixed points of the loop.
    `owned` (indices into `specs`) restricts training to some of the dictionaries; each keeps the
    initialisation seed of its place in the whole suite, so a dictionary comes out the same whichever
    process trains it (`saescope.train.distributed` shards a suite over torchrun ranks this way).
    `parents` maps a spec's `init_from` to the raw-space dictionary the caller loaded from it (any format
    `saescope.release.load_sae` reads); a spec whose `init_from` is not among them names a saescope dictionary
    folder, read here (`saescope.train.init_from`).
    """

    def __init__(
        self,
        specs: Sequence[SAESpec],
        source: ActivationSource,
        config: TrainConfig,
        out_dir: Path,
        *,
        owned: Sequence[int] | None = None,
        parents: Mapping[str, SparseDictionary] | None = None,
    ) -> None:
        check_unique_names([spec.name for spec in specs], what="dictionary")
        needed = {site for spec in specs for site in (*spec.input_sites, *spec.output_sites)}
        missing = sorted(site.id for site in needed - set(source.sites))
        if missing:
            raise ValueError(f"the activation source has no site {missing}; it has {[s.id for s in source.sites]}")
        for spec in specs:
            for sites, width_name, width in (
                (spec.input_sites, "d_in", spec.dictionary.d_in),
                (spec.output_sites, "d_out", spec.dictionary.d_target),
            ):
                for site in sites:
                    if source.widths[site] != width:
                        raise ValueError(f"{spec.name}: {width_name} {width} != width {source.widths[site]} of {site}")
        self.specs = list(specs)
        self.source = source
        self.config = config
        self.out_dir = out_dir
        self.norm_scales = {
            site: source.norm_scales[site] for spec in specs for site in (*spec.input_sites, *spec.output_sites)
        }
        for site, scale in self.norm_scales.items():
            if not (math.isfinite(scale) and scale > 0):
                raise BadActivationsError(
                    f"the normalisation scale of {site} is {scale}: the activations it was estimated from are "
                    f"{'all zero' if scale == 0 else 'not finite (NaN or infinity)'}. The data is at fault, not the "
                    "training settings; fix the activation source (cache, file or model dtype)."
                )
        self.parents = dict(parents or {})
        indices = list(range(len(self.specs))) if owned is None else sorted(owned)
        if len(set(indices)) != len(indices) or not all(0 <= i < len(self.specs) for i in indices):
            raise ValueError(f"owned must hold distinct indices into the {len(self.specs)} specs; got {owned}")
        self.members = [self._build(index, self.specs[index]) for index in indices]
        #: The recipe elements `config` switches on, in the order they act.
        self.elements = build_elements(config)
        #: The raw (unnormalised) batch of the current step, site by site (read when a loss is not finite).
        self._step_batch: dict[Site, torch.Tensor] = {}
        self.metrics_path = out_dir / METRICS
        self.step = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    def _build(self, index: int, spec: SAESpec) -> Member:
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + index)
        sae = build_any_dictionary(spec.dictionary, generator=generator).to(self.config.device)
        if spec.init_from is not None:
            parent = self.parents.get(spec.init_from)
            if parent is None:  # a saescope folder the caller did not load
                parent = read_parent(spec.init_from)
            unfold_into_(single_layer(sae, "init_from"), parent, self.norm_scales[spec.site], where=spec.init_from)
        # fused: one kernel over all parameters instead of several per tensor, with the same update rule.
        optimizer = torch.optim.Adam(
            sae.parameters(), lr=spec.lr, betas=self.config.adam_betas, eps=self.config.adam_eps, fused=True
        )
        controller = TargetL0Controller(spec.target_l0, gain=self.config.controller_gain) if spec.target_l0 else None
        fired_F = torch.zeros(spec.dictionary.total_width, dtype=torch.int64, device=self.config.device)
        return Member(spec, sae, optimizer, controller, fired_F)

    # --- checkpoints (the layout: `saescope.train.checkpoint`) ------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must have been written with to resume this run."""
        return {"config": self.config.to_dict(), "specs": [spec.to_dict() for spec in self.specs]}

    def save_checkpoint(self) -> None:
        state = self._checkpoint_state()
        atomic_write_checksummed(self.out_dir / CHECKPOINT, lambda handle: torch.save(state, handle))

    def _checkpoint_state(self) -> dict[str, Any]:
        return checkpoint_state(self)

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint if there is one; False when starting fresh."""
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            self._truncate_metrics()  # a run killed before its first checkpoint starts its log afresh
            return False
        self._restore_checkpoint(self._read_checkpoint(path, start_over=start_over_hint(path)), path)
        return True

    def _read_checkpoint(self, path: Path, *, start_over: str) -> dict[str, Any]:
        return read_checkpoint(path, self.config.device, start_over=start_over)

    def _restore_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        restore_checkpoint(self, state, path)
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metric rows logged after the checkpoint, so a resumed log has no duplicates."""
        path = self.metrics_path
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            atomic_write_text(path, "".join(row + "\n" for row in rows))

    # --- the loop -----------------------------------------------------------------------------------
    def _batches(self) -> Generator[SiteBatch, None, None]:
        """Batches from the current data position onwards, across epochs."""
        while True:
            produced = False
            for batch in self.source.batches(
                self.config.batch_size, seed=self.config.seed, epoch=self.epoch, skip_batches=self.batch_in_epoch
            ):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and self.batch_in_epoch == 0:
                raise ValueError("the activation source yielded no batch")
            self.epoch += 1
            self.batch_in_epoch = 0

    def member_batch(
        self, member: Member, batch: Mapping[Site, torch.Tensor], cache: dict[tuple[Site, Site], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's normalised input x and target y (each target divided by its paired input's scale, then
        reweighed by the elements); `cache` shares the divided tensors between the members of one step."""

        def normalised(site: Site, scale_site: Site) -> torch.Tensor:
            if (site, scale_site) not in cache:
                x = batch[site] / self.norm_scales[scale_site]
                for element in self.elements:
                    x = element.reweigh(site, x)
                cache[site, scale_site] = x
            return cache[site, scale_site]

        spec = member.spec
        xs = [normalised(site, site) for site in spec.input_sites]
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
        if not spec.transcodes:
            return x, x
        own = self.config.target_scale == "own"
        ys = [
            normalised(out, out if own else site) for out, site in zip(spec.output_sites, spec.input_sites, strict=True)
        ]
        return x, (ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1))

    def agreed_pass_count(self, passes: int) -> int:
        """How many passes over the data this process reads when it needs ``passes`` (a sharded run: the most
        any rank needs, so that every rank reads the same batches)."""
        return passes

    def _check_batch_finite(self, batch: dict[Site, torch.Tensor]) -> None:
        """Refuse a batch holding NaN or infinity, naming the step, the site and the value: the data is at fault
        (a cache, a live model overflowing in its dtype), not the training settings. One reduction per site and
        one host sync per step."""
        if not batch or bool(torch.stack([torch.isfinite(x_BD).all() for x_BD in batch.values()]).all()):
            return
        for site, x_BD in batch.items():
            found = _first_non_finite(x_BD)
            if found is not None:
                row, column, value = found
                raise BadActivationsError(
                    f"step {self.step}: the activations of {site} hold {value} (batch row {row}, column {column}): "
                    "the data is at fault, not the training settings (a corrupt cache or file, or a model that "
                    f"overflows in its dtype). The last good checkpoint in {self.out_dir} is kept; fix the "
                    "activation source, then resume."
                )

    def _check_batch_magnitudes(self, member: Member) -> None:
        """After a non-finite loss: refuse, as the data's fault, a row of the member's sites so large once divided
        by its scale C that its squared norm overflows float32. Otherwise the dictionary itself diverged."""
        spec = member.spec
        for site in dict.fromkeys((*spec.input_sites, *spec.output_sites)):
            x_BD = self._step_batch[site]
            sq_B = (x_BD.double() / self.norm_scales[site]).square().sum(-1)
            row = int(sq_B.argmax())
            if float(sq_B[row]) > _FLOAT32_MAX:
                value = float(x_BD[row].abs().max())
                raise BadActivationsError(
                    f"{spec.name} ({spec.site}): the loss is not finite at step {self.step} because batch row {row} "
                    f"of {site} holds a value of magnitude {value:.4g}, about {math.sqrt(float(sq_B[row])):.3g} times "
                    "the site's typical norm: too large for float32 arithmetic. The data is at fault, not the "
                    f"training settings; the last good checkpoint in {self.out_dir} is kept. Fix or drop those rows "
                    "of the activation source, then resume."
                )

    def _train_member(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        spec, config = member.spec, self.config
        lr = learning_rate(
            self.step,
            peak=spec.lr,
            warmup_steps=config.lr_warmup_steps,
            warmup_start_fraction=config.lr_warmup_start_fraction,
            total_steps=config.total_steps,
            decay_fraction=config.lr_decay_fraction,
        )
        for group in member.optimizer.param_groups:
            group["lr"] = lr
        scale = member.controller.scale if member.controller else 1.0
        out = member.sae.loss(x_BD, y_BD, step=self.step, coefficient_scale=scale)
        if not torch.isfinite(out.total):
            self._check_batch_magnitudes(member)
            raise TrainingDivergedError(
                f"{spec.name} ({spec.site}): the loss is {out.total.item()} at step {self.step}; "
                f"the last good checkpoint in {self.out_dir} is kept. Lower its learning rate "
                "or sparsity coefficient and resume."
            )
        out.total.backward()  # type: ignore[no-untyped-call]
        member.sae.project_decoder_grad_()
        member.optimizer.step()
        member.optimizer.zero_grad(set_to_none=True)
        member.sae.normalize_decoder_()
        l0 = float(out.l0)
        if member.controller is not None and self.step >= spec.dictionary.lambda_warmup_steps:
            member.controller.update(l0)
        firing_counts_F = out.output.firing_counts()
        member.tokens_since_fired_F += x_BD.shape[0]
        member.tokens_since_fired_F[firing_counts_F > 0] = 0
        dead_fraction = float((member.tokens_since_fired_F >= config.dead_window_tokens).float().mean())
        for element in self.elements:
            element.after_step(member, x_BD, firing_counts_F)
        member.last = {
            "loss": float(out.total.detach()),
            "l0": l0,
            "fvu": _batch_fvu(y_BD, out.output.reconstruction.detach()),
            "lambda": out.sparsity_coefficient,
            "lr": lr,
            "dead_fraction": dead_fraction,
        }

    def _log(self) -> None:
        rows = [{"step": self.step, "name": m.spec.name, **m.last} for m in self.members]
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)

    def _postfix(self) -> str:
        if len(self.members) <= 3:
            return "  ".join(f"{m.spec.name}: L0 {m.last['l0']:.1f} FVU {m.last['fvu']:.3f}" for m in self.members)
        l0s = sorted(m.last["l0"] for m in self.members)
        fvus = sorted(m.last["fvu"] for m in self.members)
        return f"L0 median {l0s[len(l0s) // 2]:.1f} [{l0s[0]:.1f}-{l0s[-1]:.1f}]  FVU median {fvus[len(fvus) // 2]:.3f}"

    def run(self, *, max_steps: int | None = None) -> list[TrainedDictionary]:
        """Train to `config.total_steps` (or stop after `max_steps` steps in total, for tests and
        time-boxed runs), resuming from the checkpoint in `out_dir` when there is one."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        atomic_write_json(self.out_dir / "train_config.json", self.identity())
        stop_at = self.config.total_steps if max_steps is None else min(max_steps, self.config.total_steps)
        sites = sorted({site for m in self.members for site in (*m.spec.input_sites, *m.spec.output_sites)})
        bar = tqdm(
            total=self.config.total_steps, initial=self.step, unit="step", disable=not self.config.progress,
            desc=f"training {len(self.members)} SAE{'s' if len(self.members) != 1 else ''}",
        )  # fmt: skip
        batches = self._batches()
        try:
            while self.step < stop_at:
                raw = next(batches)
                on_device = {site: raw[site].to(self.config.device) for site in sites}
                self._check_batch_finite(on_device)
                self._step_batch = on_device
                first = self.step == 0 and not resumed
                if first:
                    for element in self.elements:
                        element.on_first_run_batch(on_device, self.norm_scales)
                cache: dict[tuple[Site, Site], torch.Tensor] = {}
                for member in self.members:
                    x_BD, y_BD = self.member_batch(member, on_device, cache)
                    if first:
                        for element in self.elements:
                            element.on_first_batch(member, x_BD, y_BD)
                    self._train_member(member, x_BD, y_BD)
                self.step += 1
                self.tokens_seen += next(iter(raw.values())).shape[0]
                bar.update(1)
                if self.step % self.config.log_every_steps == 0 or self.step == stop_at:
                    self._log()
                    bar.set_postfix_str(self._postfix(), refresh=False)
                if self.step % self.config.checkpoint_every_steps == 0 or self.step == stop_at:
                    self.save_checkpoint()
        finally:
            bar.close()
            self._step_batch = {}
            batches.close()  # frees the stream's shuffle buffer and prefetched forwards before any later pass
            return_freed_memory()
        for element in self.elements:
            element.at_end(self)
        return [self._save_dictionary(member) for member in self.members]

    def _saved_dictionary(self, member: Member) -> AnyDictionary:
        """The member as it is saved: a copy that the elements finish (dimension gains absorbed, so that it reads
        activations divided by C alone, like every saved dictionary)."""
        sae = copy.deepcopy(member.sae)
        for element in self.elements:
            element.on_save(member, sae)
        return sae

    def _save_dictionary(self, member: Member) -> TrainedDictionary:
        folder = self.out_dir / SAES / member.spec.name
        sae = self._saved_dictionary(member)
        scales = [self.norm_scales[site] for site in member.spec.input_sites]
        scale = scales[0]
        scales_out = [self.norm_scales[site] for site in member.spec.output_sites]
        own_target_scale: dict[str, Any] = {}
        if member.spec.transcodes and self.config.target_scale == "own":
            own_target_scale = {"norm_scale_out": scales_out[0]}
            if len(scales_out) > 1:
                own_target_scale["norm_scales_out"] = scales_out
        config = {
            **member.spec.to_dict(),
            "norm_scale": scale,
            **({"norm_scales": scales} if len(scales) > 1 else {}),
            **own_target_scale,
            "training": {**self.config.to_dict(), "steps_done": self.step, "tokens_seen": self.tokens_seen},
            "final_batch_metrics": member.last,
        }
        write_dictionary_folder(folder, sae, config)
        return TrainedDictionary(member.spec.name, member.spec.sites, sae, scale, folder, dict(member.last))
