"""The 20-step SGLD chain and the full training step, eager against CUDA-graphed, for the MLP on 2-D
points and the small CNN on 32x32 images at B = 64 and 256.

eager: the fp32 reference, TF32 off: benchmarks/reference_sampler.ReferenceSampler's chain; for the
step, the trainer with that sampler and GEDILoss(backend="torch"). ours: what ships on CUDA, the
trainer's defaults cuda_graph=True and tf32=True: SGLDSampler's chain replayed as one CUDA graph.
ours_nograph: the same fused ops and TF32 without the graph, which shows what the graph adds. The
chain runs B samples; the step has batch B (two views of B points) and the trainer's sgld_samples.
No torch.compile rows: test_bench_train_step measures those. extra_info holds each case's target
speedup of ours over eager on an H200 (chain: 10x MLP, 2.5x CNN; step: 3x MLP, 2x CNN).

Graph rows need CUDA and skip elsewhere; on the CPU, quick mode keeps the MLP's B=64 eager rows only.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import DEVICE, QUICK, Case
from benchmarks.reference_sampler import ReferenceSampler
from benchmarks.test_bench_train_step import OUT, dataset
from gedi_fast import GEDILoss, SGLDConfig, SGLDSampler
from gedi_fast.precision import tf32_switches
from gedi_fast.train.models import build_model
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

IMPLS = ("eager", "ours", "ours_nograph")
# model -> (sample shape, clusters): the MLP 2-256-256-2 on moons, the SmallResNet on 32x32 images.
MODELS = {"mlp": ((2,), 2), "cnn": ((3, 32, 32), 10)}
TARGETS = {("sgld_chain", "mlp"): 10.0, ("sgld_chain", "cnn"): 2.5,
           ("train_step_graph", "mlp"): 3.0, ("train_step_graph", "cnn"): 2.0}
NO_CUDA = "CUDA graphs need a CUDA device"


def sizes(op: str) -> dict[str, tuple[str, int]]:
    """label -> (model, batch); on a CPU in quick mode the MLP at B=64 only (a CNN chain takes seconds there).
    Step labels name the trainer's SGLD samples too, as test_bench_train_step's do."""
    cpu_quick = QUICK and DEVICE == "cpu"
    samples = f"-M{TrainConfig().sgld_samples}" if op == "train_step_graph" else ""
    return {f"{model}-{'moons' if model == 'mlp' else '32x32'}-B{batch}{samples}": (model, batch)
            for model in (("mlp",) if cpu_quick else ("mlp", "cnn")) for batch in ((64,) if cpu_quick else (64, 256))}


def cases(op: str) -> list:
    return [pytest.param(Case(op, label, (batch, *MODELS[model][0])), impl, id=f"{label}-{impl}")
            for label, (model, batch) in sizes(op).items() for impl in IMPLS]


def require_impl(impl: str) -> None:
    """Skip what cannot run here: torch.compile (not measured by this suite) and graphs off CUDA."""
    if impl == "compile":
        pytest.skip("the graph suite compares eager and graphed runs; test_bench_train_step measures torch.compile")
    if impl == "ours" and DEVICE != "cuda":
        pytest.skip(NO_CUDA)


def build_chain(case: Case, impl: str):
    require_impl(impl)
    model_kind, batch = sizes(case.op)[case.size]
    shape, clusters = MODELS[model_kind]
    model = build_model(shape, clusters).to(DEVICE)
    sampler = SGLDSampler(shape, SGLDConfig(), seed=0, device=DEVICE, graph=impl == "ours")
    chain = ReferenceSampler(sampler) if impl == "eager" else sampler

    def call() -> torch.Tensor:
        with tf32_switches(impl != "eager"):
            return chain.sample(model, batch)

    return call


def build_step(case: Case, impl: str):
    require_impl(impl)
    model_kind, batch = sizes(case.op)[case.size]
    data = dataset(model_kind)
    config = TrainConfig(dataset=data.name, batch_size=batch, device=DEVICE, cuda_graph=impl == "ours",
                         tf32=impl != "eager")
    trainer = GEDITrainer(config, OUT, data)
    if impl == "eager":
        trainer.sampler = ReferenceSampler(trainer.sampler)
        trainer.loss_fn = GEDILoss(config.temperature, config.gen_weight, config.inv_weight, config.prior_weight,
                                   config.assignment, energy_reg=config.energy_reg, backend="torch")
    return trainer.train_step


def record(benchmark, case: Case, impl: str) -> None:
    model_kind, _ = sizes(case.op)[case.size]
    benchmark.extra_info.update(model=model_kind, tf32=impl != "eager", cuda_graph=impl == "ours",
                                target_speedup_vs_eager=TARGETS[(case.op, model_kind)] if impl == "ours" else None)


@pytest.mark.parametrize(("case", "impl"), cases("sgld_chain"))
def test_sgld_chain(bench, benchmark, case, impl):
    bench(case, impl, build_chain)
    record(benchmark, case, impl)


@pytest.mark.parametrize(("case", "impl"), cases("train_step_graph"))
def test_train_step_graph(bench, benchmark, case, impl):
    bench(case, impl, build_step)
    record(benchmark, case, impl)
