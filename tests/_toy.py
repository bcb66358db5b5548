"A tiny engine, random data and a quiet CPU trainer that the engine's unit tests share (seconds per fit)."
import torch
import lightning.pytorch as pl
from diffexplore.engine import DiffusionEngine
from diffexplore.denoiser import Denoiser
from diffexplore.scalings import EDMScaling
from diffexplore.weightings import EDMWeighting
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.loss import StandardDiffusionLoss
from diffexplore.networks import build_unet, OpenAIWrapper


def tiny_engine(denoiser=None, loss_fn=None, **kw) -> DiffusionEngine:
    "The tiny U-Net on 3×8×8 images with EDM's denoiser and loss (σ_data 0.5) unless given; `kw` go to `DiffusionEngine`."
    return DiffusionEngine(OpenAIWrapper(build_unet("tiny", in_channels=3, sample_size=8)), denoiser or Denoiser(EDMScaling(0.5)),
                           loss_fn or StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), **kw)


def toy_data(n: int = 6, batch_size: int = 4):
    "`n` fixed random 3×8×8 images as `{'jpg': x}` batches."
    return torch.utils.data.DataLoader([{"jpg": x} for x in torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))],
                                       batch_size=batch_size)


def cpu_trainer(max_steps: int, **kw) -> pl.Trainer:
    "A Lightning trainer on the CPU with no logger, checkpoints, progress bar or model summary."
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)
