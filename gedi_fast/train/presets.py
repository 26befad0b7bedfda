"""Named bundles of TrainConfig settings (TrainConfig.from_settings reads them) for image data, sized for the machine that runs them.

An SGLD chain through a CNN costs one forward and backward of the network per step and sample, so an
image run is designed around that cost: `cpu-images` trades network width, chain length and samples
for steps, 2500 of them, which a 2-core CPU trains in about 9.5 minutes alone (at the 223 ms step measured
alone) and 25 beside a second run (docs/RESULTS.md gives each setting's cost and why 2500); `paper-images` is the paper's setting (a ResNet-8-style CNN at full resolution, JEM's SGLD:
20 steps of size 1 with noise 0.01 from a 10000-sample replay buffer, 5% fresh), for a GPU.
`cpu-images` also starts its runs off the uniform plateau: a balanced, input-dependent head init
(head_spread 2) and a 200-step learning-rate warmup, without which MNIST-5k runs sat with flat
outputs for 300 to 1000+ steps (docs/RESULTS.md, "The start"). And it weighs the generative term
and its E^2 regulariser on the scale of the energy at temperature 1, T E: gen_weight 0.1 T and
energy_reg 0.1 T^2 (0.01 and 0.001 at T = 0.1). E = -logsumexp(z / T) moves 1 / T as far as T E when
the logits spread, so TrainConfig's energy_reg 0.1 on E^2 flattened every output at T = 0.1 (no run with
gen clustered on MNIST-5k); both scaled keep the same balance between the two (each energy settles at
+-gen_weight / (2 energy_reg) once it tells data from samples) and leave the clustering free
(docs/RESULTS.md, "the E^2 term's scale"). Its fresh chains start from the Gaussian fitted to the
training images (sgld_start "gaussian") rather than uniform noise: with 5 chain steps per visit the
samples stay near where they start, and from the Gaussian they become digits a person names (FID ratio
0.14-0.19 on MNIST-5k against 0.50-0.76 from noise, 5 seeds) and cluster no worse (docs/RESULTS.md,
"Gaussian chain starts"). The uniform plateau that held MNIST-5k runs for up to 1500 steps comes from
the augmentation: a fresh network's features move more under MNIST-5k's augmentation than between
digits, two views of an image disagree, and flat outputs are the invariance term's best answer; so the
augmentation ramps in over the first 300 steps (view_warmup), which keeps every run off the plateau
from the first steps (docs/RESULTS.md, "Ramping the augmentation in"). With the ramp the chain and gen
start at step 0: the 300-step wait (gen_delay) that an earlier preset used against the plateau cost
MNIST-5k clustering once the ramp was there (docs/RESULTS.md, "The generative term from step 0").
Chains from a Gaussian mixture over k-means groups of the images (sgld_start "mixture") make better
samples, spread over the classes, but cluster Fashion-MNIST worse, so the preset keeps the one Gaussian
(docs/RESULTS.md, "Chain starts from a Gaussian mixture"); chains from a copula (sgld_start "copula",
starts as bright as the data) raise the energy's Fashion-MNIST-in OOD score a little and nothing else;
starts darker than the data (sgld_darken) raise it to no gen's level on two seeds of three but cost
samples, and MNIST-5k clustering on the seed tried (docs/RESULTS.md, "Fashion-MNIST in: what the
energy reads"). A generative term that reads the batch's un-augmented images (gen_positives "data")
makes the chain alone draw clean digits and full GEDI's Fashion-MNIST samples and OOD score far
better, but clusters Fashion-MNIST worse and puts two MNIST-5k seeds' samples over the FID bar, so the
preset keeps the views (docs/RESULTS.md, "Un-augmented positives").
Vector data needs no preset: TrainConfig's defaults are measured on it.
"""
from __future__ import annotations

from gedi_fast.validation import require_choice

PRESETS: dict[str, dict[str, object]] = {
    "cpu-images": dict(width=32, stem_stride=2, batch_size=128, steps=2500, sgld_steps=5, sgld_samples=32,
                       buffer_size=5000, log_every=100, checkpoint_every=500, head_spread=2.0, lr_warmup=200,
                       gen_weight=0.01, energy_reg=0.001, sgld_start="gaussian", view_warmup=300),
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
