"""GEDITrainer: two augmented views per batch, SGLD negatives, GEDILoss, Adam, logging, evaluation on
held-out data, a failure-mode monitor for the paper's triad, and checkpoints that resume exactly.

Under torch.distributed (DDP, e.g. torchrun) every rank trains its own slice of the global batch, runs
SGLD on its own replay buffer and noise stream, and the loss and gradients are those of one process
on the global batch; rank 0 alone shows progress and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import pathlib
import sys
import time
import warnings
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from tqdm import tqdm

from gedi_fast.loss import GEDILoss
from gedi_fast.precision import resolve_memory_format, resolve_precision, tf32_switches
from gedi_fast.reference import fit_copula_start, fit_gaussian_start, fit_mixture_start
from gedi_fast.sampler import SGLDSampler
from gedi_fast.train import checkpoint, launch, metrics, seeds
from gedi_fast.train.augment import AUGMENTATIONS
from gedi_fast.train.config import EARLIER_DEFAULTS, RESUME_CHANGEABLE, SETTINGS, TrainConfig
from gedi_fast.train.data import Dataset, load_dataset
from gedi_fast.train.models import build_model, spread_head
from gedi_fast.train.recovery import Recovery, divergence
from gedi_fast.train.run_log import EVERY_STEP, STEP_TERMS, RunLog, StepTerms

__all__ = ["CHECKPOINT_NAME", "RESUME_CHANGEABLE", "GEDITrainer", "TrainConfig", "TrainingStopped"]

CHECKPOINT_NAME = "checkpoint.pt"

GEN_TERMS = ("gen", "energy_reg")  # the terms a gen_positives "data" run weighs in its generative loss
# The parts of a training step as torch.profiler labels them (benchmarks/profile_step.py reads them).
STEP_PHASES = ("step:views", "step:sgld_chain", "step:forward_loss", "step:backward", "step:optimiser")
# What gloo and NCCL say when a peer is gone or a collective ran past the process group's timeout.
COLLECTIVE_FAILURES = ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer", "NCCL")


class TrainingStopped(RuntimeError):
    """Training cannot go on safely: a checkpoint could not be written, or another rank stopped answering."""


# What a checkpoint holds (state_dict).
STATE_KEYS = ("config", "step", "model", "optimiser", "samplers", "generator", "torch_rng", "history")

HEAD_INIT_ROWS = 1024  # training rows config.head_spread's data-dependent head init looks at


class GEDITrainer:
    """Owns the loop; `train()` runs to config.steps (or `until`), `evaluate()` scores the test split.

    Built inside an initialised process group of several ranks, it trains with DDP: every rank must
    build it, call train() and save() alike. `model` is always the plain module (SGLD, evaluation and
    checkpoints use it); `ddp` is its DistributedDataParallel wrapper for the training forward, or None.
    """

    def __init__(self, config: TrainConfig, out: str | pathlib.Path, dataset: Dataset | None = None,
                 sampler_start: tuple[torch.Tensor, ...] | list[torch.Tensor] | None = None) -> None:
        """sampler_start: the fitted chain start a checkpoint holds (resume passes it), so a continued
        run does not fit it to the training images again (seconds for a Gaussian mixture)."""
        self.config = config
        self.out = pathlib.Path(out)
        self.rank, self.world_size = launch.rank_and_world_size()
        self.device = launch.rank_device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} needs CUDA, which this machine or torch build lacks; use 'cpu'")
        try:  # any other backend torch knows by name (mps, xpu, ...) but this build or machine may lack
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"device {config.device!r} is not available on this machine or torch build "
                             f"({str(err).splitlines()[0].split('. ')[0]}); use 'cpu'") from None
        self.rollbacks = 0
        self.dataset = dataset if dataset is not None else load_dataset(config.dataset, config.data_root, config.seed)
        self.clusters = config.clusters or self.dataset.num_classes
        images = self.dataset.kind == "image"
        # What "auto" means on this device, decided once: the arithmetic and layout this run computes in.
        self.precision = resolve_precision(config.precision, self.device, images)
        torch.manual_seed(config.seed)
        self.model = build_model(self.dataset.input_shape, self.clusters, **config.model_options())
        self.memory_format = resolve_memory_format(config.memory_format, self.model, self.device)
        self.model.to(self.device, memory_format=self.memory_format)
        # foreach: one multi-tensor update instead of a loop over parameters (CUDA's default already),
        # bit-identical to the loop and about twice as fast on the CPU (docs/RESULTS.md).
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(config.adam_beta1, 0.999),
                                          foreach=True)
        # With gen_positives "data" the generative term and E^2 get a loss of their own, on the batch's
        # images and the samples; the views' loss keeps the clustering terms.
        generative = config.gen_weight != 0 or config.energy_reg != 0  # a run with a chain
        separate = generative and config.gen_positives == "data"
        self.loss_fn = GEDILoss(config.temperature, 0.0 if separate else config.gen_weight, config.inv_weight,
                                config.prior_weight, config.assignment, sinkhorn_eps=config.sinkhorn_eps,
                                sinkhorn_iters=config.sinkhorn_iters, energy_reg=0.0 if separate else config.energy_reg,
                                queue_size=config.queue_size, form=config.form)
        self.gen_loss_fn = (GEDILoss(config.temperature, config.gen_weight, 0.0, 0.0, energy_reg=config.energy_reg)
                            if separate else None)
        self.train_x = self.dataset.train_x.to(self.device)
        if config.head_spread:
            spread_head(self.model, self.train_x[:HEAD_INIT_ROWS], config.temperature, config.head_spread)
        self.augmentation = config.augmentation or self.dataset.augmentation
        self.view_noise = self.dataset.view_noise if config.view_noise is None else config.view_noise
        if not AUGMENTATIONS[self.augmentation].fits(self.dataset.kind, self.dataset.input_shape):
            raise ValueError(f"augmentation {self.augmentation!r} does not fit dataset {self.dataset.name!r} "
                             f"with inputs of shape {self.dataset.input_shape}")
        self.sampler = None
        if generative:
            sgld = config.sgld_config(self.dataset.sgld)
            if sampler_start is not None or sgld.start == "uniform":
                start = None if sampler_start is None else tuple(sampler_start)
            elif sgld.start == "gaussian":
                start = fit_gaussian_start(self.dataset.train_x)
            elif sgld.start == "mixture":
                start = fit_mixture_start(self.dataset.train_x, self.clusters)
            else:
                start = fit_copula_start(self.dataset.train_x)
            self.sampler = SGLDSampler(self.dataset.input_shape, sgld, config.temperature, self.sampler_seed(),
                                       self.device, graph="auto" if config.cuda_graph else False, start=start)
        if config.compile_step and self.world_size > 1:
            raise ValueError(f"compile_step=True is not supported under DDP (world size {self.world_size}); "
                             f"train with compile_step=False")
        # The step's forward and loss compiled under compile_step, with CUDA graphs on CUDA. Not held
        # otherwise: a bound method of its own would keep the trainer (and under DDP the process group
        # its reducer holds) alive until a garbage collection, possibly the one at interpreter exit.
        self._compiledforward_loss = (torch.compile(self.forward_loss, mode="reduce-overhead", dynamic=False)
                                       if config.compile_step else None)
        self.ddp = None
        if self.world_size > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        # The same stream on every rank: each draws the global batch and keeps its own slice.
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + seeds.TRAINING_DRAWS)
        self.step = 0
        self._saved_step: int | None = None  # the step of the checkpoint on disk, when this run wrote or read one
        self.history: list[dict] = []
        self.stopped_at: int | None = None  # the step train() stopped at when its `stop` said so

    def views(self, x: torch.Tensor, generator: torch.Generator,
              strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        view = AUGMENTATIONS[self.augmentation].view
        return view(x, self.view_noise, generator, strength), view(x, self.view_noise, generator, strength)

    def positives(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """What the generative term reads as data under gen_positives "data": x with the view noise only
        (the view at strength 0). None when gen reads the views."""
        if self.gen_loss_fn is None:
            return None
        return AUGMENTATIONS[self.augmentation].view(x, self.view_noise, generator, 0.0)

    @property
    def term_weights(self) -> dict[str, float]:
        """Each term's weight in the training loss, whichever of the two losses carries it."""
        return self.loss_fn.weights | ({} if self.gen_loss_fn is None else
                                       {name: self.gen_loss_fn.weights[name] for name in GEN_TERMS})

    def view_strength(self, step: int) -> float:
        """The augmentation's strength at step `step` (counted from 0): step / view_warmup, up to 1."""
        return min(1.0, step / self.config.view_warmup) if self.config.view_warmup else 1.0

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the model when the run computes in bf16; GEDILoss upcasts the logits, so its
        internals stay fp32, and the SGLD chain's input gradient comes back fp32 for fp32 samples."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def tf32(self) -> contextlib.AbstractContextManager:
        """On CUDA: TF32 matmuls and convolutions inside when config.tf32, else strict fp32. Elsewhere a no-op."""
        return tf32_switches(self.config.tf32) if self.device.type == "cuda" else contextlib.nullcontext()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One step on this rank's rows of the global batch, so W ranks step like one process on W x batch_size.

        The views of the whole global batch come from the shared stream and each rank keeps its slice;
        views and SGLD samples then go through the network in one forward, as DDP expects. The whole
        step, backward included, runs under tf32().
        """
        with self.tf32():
            return self._train_step()

    def _train_step(self) -> dict[str, torch.Tensor]:
        if self.world_size > 1 and self.ddp is None:
            raise RuntimeError(f"rank {self.rank}: this trainer left the process group (leave_process_group); "
                               f"it can evaluate but no longer train")
        rows = self.config.batch_size
        with record_function(STEP_PHASES[0]):
            indices = torch.randint(0, len(self.train_x), (self.world_size * rows,), generator=self.generator,
                                    device=self.device)
            mine = slice(self.rank * rows, (self.rank + 1) * rows)
            batch = self.train_x[indices]
            view1, view2 = (view[mine] for view in self.views(batch, self.generator, self.view_strength(self.step)))
            positives = self.positives(batch, self.generator)
            positives = None if positives is None else positives[mine]
        with record_function(STEP_PHASES[1]), self.autocast():
            samples = self.sampler.sample(self.model, self.config.sgld_samples) if self.samples_at(self.step) else None
        self.model.train()
        if self.config.compile_step:
            torch.compiler.cudagraph_mark_step_begin()
        with record_function(STEP_PHASES[2]):
            loss, terms = (self._compiledforward_loss or self.forward_loss)(view1, view2, samples, positives)
        with record_function(STEP_PHASES[3]):
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
        with record_function(STEP_PHASES[4]):
            if self.config.lr_warmup:
                for group in self.optimiser.param_groups:
                    group["lr"] = self.config.lr * min(1.0, (self.step + 1) / self.config.lr_warmup)
            self.optimiser.step()
        self.step += 1
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def samples_at(self, step: int) -> bool:
        """Whether step `step` (counted from 0) draws SGLD samples: with a sampler, from step gen_delay on."""
        return self.sampler is not None and step >= self.config.gen_delay

    def forward_loss(self, view1: torch.Tensor, view2: torch.Tensor, samples: torch.Tensor | None,
                     positives: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Views, samples and positives (gen_positives "data") through the network in one forward, then
        GEDILoss, or the views' loss plus the generative one on the positives: what compile_step compiles."""
        rows = len(view1)
        network = self.model if self.ddp is None else self.ddp
        with self.autocast():
            logits = network(torch.cat([view1, view2] + [x for x in (samples, positives) if x is not None]))
        zn = logits[2 * rows:2 * rows + len(samples)] if samples is not None else None
        if positives is None:
            loss, terms = self.loss_fn(logits[:rows], logits[rows:2 * rows], zn, return_terms=True)
        else:
            zp = logits[len(logits) - len(positives):]
            loss, terms = self.loss_fn(logits[:rows], logits[rows:2 * rows], None, return_terms=True)
            gen_loss, gen_terms = self.gen_loss_fn(zp, zp, zn, return_terms=True)
            loss = loss + gen_loss
            terms = terms | {name: gen_terms[name] for name in (*GEN_TERMS, "energy_data", "energy_neg")}
        return loss, {**terms, "logit_spread": metrics.logit_spread(logits[:rows].detach(), self.config.temperature)}

    def train(self, until: int | None = None, progress: bool = False, log_lines: bool = False,
              stop: Callable[[], bool] | None = None) -> list[dict]:
        """Train to step `until` (default config.steps), logging and checkpointing on the way.

        `stop` is polled after every step (the CLI passes a signal's StopRequest): once it says True the
        run checkpoints the step it finished and returns early, with `stopped_at` set to that step.
        Under DDP the ranks agree (a max over a CPU flag, every step), so all stop at the same step.
        Rank 0 appends every log record and rollback to the run folder's log.jsonl and, with
        config.tensorboard where tensorboard is installed, writes them as TensorBoard scalars into
        OUT/tensorboard/ (gedi_fast.train.run_log). A record also holds the loss and terms of every step since
        the previous one, read at the log step.

        progress=True shows a tqdm bar with the latest loss (the CLI asks for one on a terminal);
        log_lines=True prints a line per log step to stderr instead (step, terms, samples/s, ETA: the
        CLI's choice when stderr is a file or pipe, where a bar would stay silent). Rank 0 only. Under
        DDP every rank calls it with the same `until`. Logged terms are global (the loss is), and
        samples_per_s counts the global batch.

        Divergence recovery (gedi_fast.train.recovery): at each log and checkpoint step, where the loop reads
        values anyway (no other host sync), the state is checked. A good state is copied in memory and
        only a good state is checkpointed. A bad one rolls back to the last good copy, reseeds the
        replay buffer (a seed derived from the number of rollbacks so far), appends a record
        {"step", "event": "rollback", "reason", "retry", "diverged_at"} to the history, warns and
        carries on; after config.max_retries rollbacks without getting past the step that diverged, it
        raises FloatingPointError. Under DDP the checked values are global and the parameters equal
        on every rank, so every rank takes the same decision without a collective.
        """
        until = self.config.steps if until is None else until
        started, first = time.perf_counter(), self.step
        bar = tqdm(total=until, initial=self.step, desc=self.config.dataset, disable=not progress or self.rank != 0,
                   leave=False)
        recovery = Recovery(self, self.config.max_retries)
        self.stopped_at = None
        agree = self._stop_agreement() if stop is not None else None
        every_step = StepTerms()
        run_log = RunLog(self.out, self.step, self.config.tensorboard) if self.rank == 0 else None
        try:
            while self.step < until:
                values = self.train_step()
                every_step.add(self.step, values)
                bar.update(1)
                stopping = agree is not None and agree(stop())
                log = self.step % self.config.log_every == 0 or self.step == until
                save = self.step % self.config.checkpoint_every == 0 or self.step == until or stopping
                if not (log or save):
                    continue
                if recovery.rolled_back(divergence(values, self.model.parameters(), self.config.max_energy,
                                                   self.world_size, sampled=self.samples_at(self.step - 1))):
                    every_step.drop_after(self.step)
                    if run_log is not None:
                        run_log.write(self.history[-1])
                    bar.n = self.step
                    bar.refresh()
                    started, first = time.perf_counter(), self.step
                    if stopping:  # the last good state, restored, is what the checkpoint keeps
                        self.save()
                        self.stopped_at = self.step
                        break
                    continue
                if log:
                    record = {"step": self.step, **{k: v.item() for k, v in values.items()}}
                    record["energy_gap"] = record["energy_neg"] - record["energy_data"] if self.sampler else math.nan
                    seen = (self.step - first) * self.world_size * self.config.batch_size
                    record["samples_per_s"] = seen / (time.perf_counter() - started)
                    record[EVERY_STEP] = every_step.take()
                    self.history.append(record)
                    if run_log is not None:
                        run_log.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                        if log_lines:
                            print(self._log_line(record, until, started, first), file=sys.stderr, flush=True)
                if save:
                    self.save()
                recovery.keep()
                if stopping:
                    self.stopped_at = self.step
                    break
        except RuntimeError as err:
            if isinstance(err, TrainingStopped) or self.world_size == 1 or not any(
                    mark in str(err) for mark in COLLECTIVE_FAILURES):
                raise
            raise self._collective_failure(err) from err
        finally:
            bar.close()
            if run_log is not None:
                run_log.close()
        return self.history

    def _stop_agreement(self) -> Callable[[bool], bool]:
        """requested -> whether any rank requested a stop: the value itself for one process; under DDP a
        max over the ranks on the CPU (a gloo group beside NCCL's), so no step waits on the GPU."""
        if self.world_size == 1:
            return lambda requested: requested
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

        def agree(requested: bool) -> bool:
            flag = torch.tensor([int(requested)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            return bool(flag.item())

        return agree

    def _collective_failure(self, err: RuntimeError) -> TrainingStopped:
        """A collective that failed or timed out (another rank died or hung), as an error naming this
        rank and the step instead of gloo's or NCCL's bare message."""
        return TrainingStopped(
            f"rank {self.rank} of {self.world_size}: a collective after step {self.step} did not complete "
            f"(collective_timeout {self.config.collective_timeout:g} s): another rank stopped, hung or died; "
            f"the last checkpoint is of step {self._saved_step} ({str(err).splitlines()[0]})")

    def _log_line(self, record: dict, until: int, started: float, first: int) -> str:
        per_step = (time.perf_counter() - started) / max(self.step - first, 1)
        eta = datetime.timedelta(seconds=round(per_step * (until - self.step)))
        terms = " ".join(f"{name}={record[name]:.4g}" for name in STEP_TERMS)
        return f"step {self.step}/{until} {terms} {record['samples_per_s']:.0f} samples/s ETA {eta}"

    def sampler_seed(self) -> int:
        """This rank's SGLD seed after self.rollbacks rollbacks (gedi_fast.train.seeds)."""
        return seeds.sampler_seed(self.config.seed, self.rank, self.rollbacks)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Scores on the test split plus the failure-mode monitor (representation, clusters, permutations).

        The whole test split on the plain module, with no collective: under DDP any rank may call it
        alone (the CLI: rank 0), and every rank would get the same scores.
        """
        self.model.eval()
        x = self.dataset.test_x.to(self.device)
        features = self.model.features(x)
        logits = self.model.head(features)
        predicted = logits.argmax(1).cpu()
        # Its own stream: evaluating mid-run must not shift the training draws (resume equivalence).
        view1, view2 = self.views(x, torch.Generator(device=self.device).manual_seed(self.config.seed + seeds.EVALUATION_VIEWS))
        agreement = (self.model(view1).argmax(1) == self.model(view2).argmax(1)).float().mean().item()
        return {
            **metrics.clustering_scores(self.dataset.test_y, predicted),
            **metrics.cluster_usage(predicted, self.clusters),
            "view_agreement": agreement,
            **metrics.representation_scores(features),
            "steps": self.step,
        }

    def state_dict(self) -> dict:
        """The run's state. "samplers" holds every rank's replay buffer and stream (None without SGLD),
        "queues" every rank's queue of past logits (None without queue_size).

        Under DDP it is a collective (every rank calls it) and "samplers", "queues" are complete on rank 0 only;
        model, optimiser and the data stream are the same on every rank.
        """
        live = self.run_state()
        sampler, queue = live.pop("sampler"), live.pop("queue")
        return {"config": dataclasses.asdict(self.config), **live, "samplers": self._rank_states(sampler),
                "queues": self._rank_states(queue), "history": self.history, "rollbacks": self.rollbacks,
                "inputs": self.inputs_state()}

    def run_state(self) -> dict:
        """This rank's live state, listed once: what a rollback restores and, gathered over the ranks,
        what a checkpoint keeps beside the config, history and input statistics. The live tensors, not
        copies (Recovery copies what it keeps)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
            "queue": None if self.loss_fn.queue is None else self.loss_fn.queue.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_run_state(self, state: dict) -> None:
        """Continue from a run_state() dict; a missing (None) sampler or queue state leaves that part as it is."""
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        if self.loss_fn.queue is not None and state["queue"] is not None:
            self.loss_fn.queue.load_state_dict(state["queue"])
            self.loss_fn.queue.to(self.device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]

    def roll_back_to(self, good: dict, reason: str, retry: int) -> None:
        """Restore the run state `good` (Recovery's), reseed the replay buffer, record and announce the rollback."""
        diverged_at = self.step
        self.load_run_state(good)
        self.rollbacks += 1
        if self.sampler is not None:
            self.sampler.reseed(self.sampler_seed())
        self.history.append({"step": self.step, "event": "rollback", "reason": reason, "retry": retry,
                             "diverged_at": diverged_at})
        if self.rank == 0:
            warnings.warn(f"step {diverged_at}: {reason}; rolled back to step {self.step} with a reseeded replay "
                          f"buffer (retry {retry} of {self.config.max_retries})", RuntimeWarning, stacklevel=4)

    def inputs_state(self) -> dict:
        """What assigning new data needs beside the model: the input shape, the number of clusters and
        the standardisation raw values went through (input = (raw - offset) / scale)."""
        as_tensor = lambda value: torch.as_tensor(value, dtype=torch.float32).clone()  # noqa: E731
        return {"shape": list(self.dataset.input_shape), "clusters": self.clusters,
                "offset": as_tensor(self.dataset.input_offset), "scale": as_tensor(self.dataset.input_scale)}

    def _rank_states(self, own: dict | None) -> list[dict] | None:
        """Every rank's `own` state of a part (its replay buffer, its queue), complete on rank 0; None without one."""
        if own is None:
            return None
        if self.world_size == 1:
            return [own]
        own = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in own.items()}
        states = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(own, states, dst=0)
        return states

    def save(self) -> pathlib.Path:
        """Write the checkpoint (atomically, with a checksum; the one it replaces stays as checkpoint.prev.pt).

        Under DDP every rank calls it: rank 0 writes, then every rank learns whether it succeeded (one
        all-reduce, which also keeps any rank from running ahead of a checkpoint being written).
        A failed write (a full disk, a folder gone read-only) raises TrainingStopped on every rank:
        the previous checkpoint is untouched (save_atomic writes beside it and renames only a complete
        file), and training stops rather than go on with no durable state behind it.
        """
        state, path = self.state_dict(), self.out / CHECKPOINT_NAME
        failure = None
        if self.rank == 0:
            try:
                checkpoint.save_atomic(state, path)
            except OSError as err:
                failure = err
        if self.world_size > 1:
            failed = torch.tensor([0.0 if failure is None else 1.0], device=self._collective_device())
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and failure is None:
                raise TrainingStopped(f"rank {self.rank}: rank 0 could not write the checkpoint of step {self.step}; "
                                      f"see its error")
        if failure is not None:
            kept = (f"the checkpoint of step {self._saved_step} is intact" if self._saved_step is not None
                    else "no earlier checkpoint exists")
            raise TrainingStopped(f"writing the checkpoint of step {self.step} to {path} failed "
                                  f"({failure.strerror or failure}); {kept}; training stops here: free space or "
                                  f"fix {self.out}, then resume with --resume") from failure
        self._saved_step = self.step
        return path

    def leave_process_group(self) -> None:
        """Drop the DDP wrapper: its reducer holds the process group and gradient buckets.

        Called under DDP when training is over, before the group is destroyed, so the group and its
        threads end now rather than whenever the trainer is collected, possibly while Python shuts
        down, where a gloo thread that still holds tensors aborts the process. The trainer can still
        evaluate, save metrics and plot; it no longer trains.
        """
        self.ddp = None

    def _collective_device(self) -> torch.device:
        """Where a tensor for a collective must live: the GPU for NCCL, the CPU for gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; under DDP every rank loads the same checkpoint.

        Rank r takes the r-th saved sampler and queue states, so resuming on the same number of ranks is exact;
        ranks beyond the saved ones keep the fresh buffer of their own seed.
        """
        def mine(states: list[dict] | None) -> dict | None:
            return states[self.rank] if states is not None and self.rank < len(states) else None

        # Checkpoints from before the queue have no "queues".
        self.load_run_state({**state, "sampler": mine(state["samplers"]), "queue": mine(state.get("queues"))})
        self.history = state["history"]
        self._saved_step = self.step
        self.rollbacks = state.get("rollbacks", 0)  # checkpoints from before divergence recovery have none

    @staticmethod
    def has_checkpoint(out: str | pathlib.Path) -> bool:
        """Whether run folder `out` holds a checkpoint (or the previous one) to resume from."""
        path = pathlib.Path(out) / CHECKPOINT_NAME
        return path.exists() or checkpoint.previous_path(path).exists()

    @staticmethod
    def saved_state(out: str | pathlib.Path) -> tuple[dict, TrainConfig]:
        """(state, config) of the checkpoint in run folder `out` (the previous checkpoint, with a
        warning, when the newest is missing, truncated or corrupt); CheckpointError for a file that
        is not a gedi_fast training checkpoint. Configs saved before TrainConfig nested its SGLD
        settings (flat sgld_steps, buffer_size, ...) load as TrainConfig.from_settings reads them, and
        fields they lack whose default changed since take the value those runs had (EARLIER_DEFAULTS)."""
        path = pathlib.Path(out) / CHECKPOINT_NAME
        state = checkpoint.require_keys(checkpoint.load_latest(path), STATE_KEYS, path)
        known = {*SETTINGS, "sgld"}
        saved = state["config"]
        if not isinstance(saved, dict) or not set(saved) <= known:
            unknown = sorted(set(saved) - known) if isinstance(saved, dict) else type(saved).__name__
            raise checkpoint.CheckpointError(f"{path} is not a gedi_fast training checkpoint: its config has {unknown}")
        return state, TrainConfig.from_settings(**EARLIER_DEFAULTS | saved)

    @classmethod
    def resume(cls, out: str | pathlib.Path, dataset: Dataset | None = None,
               saved: tuple[dict, TrainConfig] | None = None, **changes) -> "GEDITrainer":
        """A trainer continuing exactly where the checkpoint in `out` stopped; `changes` replace
        config fields that a continuation may change (RESUME_CHANGEABLE, e.g. steps to extend a run).
        `saved`: what saved_state(out) returned, when the caller read it already (the checkpoint is read once)."""
        state, config = saved if saved is not None else cls.saved_state(out)
        fixed = sorted(set(changes) - set(RESUME_CHANGEABLE))
        if fixed:
            raise ValueError(f"a resumed run keeps its {', '.join(fixed)}; only {', '.join(RESUME_CHANGEABLE)} may change")
        saved_start = ((state.get("samplers") or [None])[0] or {}).get("start")  # every rank fits the same start
        trainer = cls(config.with_settings(**changes), out, dataset, sampler_start=saved_start)
        trainer.load_state_dict(state)
        return trainer

    def write_metrics(self, scores: dict[str, float], wall_s: float | None = None) -> pathlib.Path:
        """metrics.json: held-out scores, the latest training throughput (samples/s, global batch),
        the wall time of this process's training (wall_s, when given), the config and what its "auto"
        and dataset-chosen settings resolved to (`ran_with`: precision, memory format, views, SGLD chain)."""
        logged = [h for h in self.history if "samples_per_s" in h]
        speed = {"samples_per_s": logged[-1]["samples_per_s"] if logged else None, "train_wall_s": wall_s}
        ran_with = {"precision": self.precision, "memory_format": str(self.memory_format).removeprefix("torch."),
                    "augmentation": self.augmentation, "view_noise": self.view_noise,
                    "sgld": None if self.sampler is None else dataclasses.asdict(self.sampler.config)}
        path = self.out / "metrics.json"
        path.write_text(json.dumps({**scores, **speed, "config": dataclasses.asdict(self.config), "ran_with": ran_with},
                                   indent=2))
        return path
