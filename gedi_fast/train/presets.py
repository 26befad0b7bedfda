"""Named bundles of TrainConfig settings (TrainConfig.from_settings reads them) for image data, sized for the machine that runs them.

An SGLD chain through a CNN costs one forward and backward of the network per step and sample, so an
image run is designed around that cost: `cpu-images` trades network width, chain length and samples
for steps, 2500 of them: 7 to 10 minutes of training a run beside a second one (one thread each) on a
2-core CPU with native bf16, the Intel Xeon with AMX-BF16 and the AMD EPYC of docs/RESULTS.md (which
gives each setting's cost and why 2500);
`paper-images` is the paper's setting (a ResNet-8-style CNN at full resolution, JEM's SGLD: 20 steps
of size 1 with noise 0.01 from a 10000-sample replay buffer, 5% fresh), for a GPU.
`cpu-images` also starts its runs off the uniform plateau: a balanced, input-dependent head init
(head_spread 2) and a 200-step learning-rate warmup, without which MNIST-5k runs sat with flat
outputs for 300 to 1000+ steps (docs/RESULTS.md, "The start"). And it weighs the generative term
and its E^2 regulariser on the scale of the energy at temperature 1, T E: gen_weight 0.1 T and
energy_reg 0.1 T^2 (0.01 and 0.001 at T = 0.1). E = -logsumexp(z / T) moves 1 / T as far as T E when
the logits spread, so TrainConfig's energy_reg 0.1 on E^2 flattened every output at T = 0.1 (no run with
gen clustered on MNIST-5k); both scaled keep the same balance between the two (each energy settles at
+-gen_weight / (2 energy_reg) once it tells data from samples) and leave the clustering free
(docs/RESULTS.md, "the E^2 term's scale").
The generative term reads the batch's un-augmented images (gen_positives "data"), not the views: the
energy learns what its positives look like, and the samples are judged against the images
(docs/RESULTS.md, "Un-augmented positives"). The chain's gradient is clamped at 0.03 an element
(sgld_grad_clamp): the clustering terms make the energy steep in x, and at step 1 single pixels jumped
across the data's range, speckling MNIST-5k's samples (docs/DESIGN.md, "The gradient clamp"). Its fresh
chains start from a Gaussian copula of the training images (sgld_start "copula": each pixel's own
distribution, black background included) rather than uniform noise: with 5 chain steps per visit the
samples stay near where they start (docs/RESULTS.md, "the E^2 term's scale"). Each fresh start is then
dimmed toward black by its own factor between 1 and 0.5 (sgld_darken 0.5): an energy trained only
against chains as bright as the data rates dimmer images as more likely, and with Fashion-MNIST in it
took MNIST's dimmer digits for its own (docs/RESULTS.md, "Fashion-MNIST in: what the energy reads");
dimming by up to 0.9 instead left faint MNIST-5k samples over the FID bar. Over 5 seeds of both datasets
these make samples within the FID bar, cluster at least as well as without gen, and make the energy tell
the other dataset apart better than without gen in both directions and better than max-softmax
(docs/RESULTS.md, "Darkened copula starts"). The uniform plateau that held MNIST-5k runs for
up to 1500 steps comes from the augmentation: a fresh network's features move more under MNIST-5k's
augmentation than between digits, two views of an image disagree, and flat outputs are the invariance
term's best answer; so the augmentation ramps in over the first 300 steps (view_warmup), which keeps
every run off the plateau from the first steps (docs/RESULTS.md, "Ramping the augmentation in"). With
the ramp the chain and gen start at step 0 (docs/RESULTS.md, "The generative term from step 0").
Vector data needs no preset: TrainConfig's defaults are measured on it.
"""
from __future__ import annotations

from gedi_fast.validation import require_choice

PRESETS: dict[str, dict[str, object]] = {
    "cpu-images": dict(width=32, stem_stride=2, batch_size=128, steps=2500, sgld_steps=5, sgld_samples=32,
                       buffer_size=5000, log_every=100, checkpoint_every=500, head_spread=2.0, lr_warmup=200,
                       gen_weight=0.01, energy_reg=0.001, sgld_start="copula", sgld_darken=0.5,
                       view_warmup=300, gen_positives="data", sgld_grad_clamp=0.03),
    "paper-images": dict(width=64, stem_stride=1, batch_size=64, lr=1e-4, steps=50_000, sgld_steps=20,
                         sgld_samples=64, sgld_step_size=1.0, sgld_noise=0.01, buffer_size=10_000, reinit_prob=0.05,
                         log_every=200, checkpoint_every=2000),
}
CHOICES = ("auto", "none", *PRESETS)


def preset_settings(name: str, kind: str, device: str) -> dict[str, object]:
    """The settings of preset `name`; "auto" picks cpu-images or paper-images for image data by
    device (a CUDA device: the paper's), nothing for vectors; "none" is nothing."""
    require_choice(name, "preset", CHOICES)
    if name == "auto":
        name = "none" if kind != "image" else "paper-images" if device.startswith("cuda") else "cpu-images"
    return dict(PRESETS.get(name, {}))
