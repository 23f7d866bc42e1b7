"""Seeded initialisation shared by the example architectures."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine params so BN folding is exercised.

    running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def seeded_eval_model(factory, seed: int) -> nn.Module:
    """Build `factory()` under `torch.manual_seed(seed)`, randomize its BNs and return it in eval mode.

    The global RNG state is restored afterwards so building a model does not perturb the caller.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()
