"""A small CNN trained on scikit-learn's bundled 8x8 digits: a real, accurate model in seconds.

The data ships with scikit-learn (no download), so quantization and accuracy checks can use a
trained network rather than random weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

INPUT_SHAPE = (1, 1, 8, 8)
NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """conv(16) -> conv(32) -> pool -> conv(64) -> pool -> fc(10), with BatchNorm after each conv."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Linear(64 * 2 * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 75/25 split of load_digits as (x_train, y_train, x_test, y_test).

    Images are float32 NCHW (N, 1, 8, 8) scaled to [0, 1] (pixels / 16); labels are int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def train(
    seed: int = 0, epochs: int = 10, batch_size: int = 64, lr: float = 3e-3, num_threads: int | None = 1
) -> DigitsCNN:
    """Train DigitsCNN on the train split with Adam + one-cycle LR; returns it in eval mode.

    Deterministic for a given seed. One thread is the default because batches this small train
    fastest single-threaded, and intra-op threads spin badly on a busy CPU (2 s vs 15 s seen);
    pass None to keep torch's current setting. The caller's thread count and RNG are restored.
    """
    x_tr, y_tr, _, _ = load_digits_split(seed)
    prev_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsCNN()
            fit(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), epochs, batch_size, lr)
    finally:
        torch.set_num_threads(prev_threads)
    return model.eval()


def fit(model: nn.Module, xs: Tensor, ys: Tensor, epochs: int, batch_size: int, lr: float,
         loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
    """Minibatch Adam with a one-cycle schedule over shuffled batches drawn from torch's global RNG.

    `loss(logits, images, labels)` replaces the cross-entropy (e.g. distillation from a teacher)."""
    loss = loss or (lambda logits, _images, labels: nn.functional.cross_entropy(logits, labels))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(xs) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(batch_size):
            opt.zero_grad()
            loss(model(xs[idx]), xs[idx], ys[idx]).backward()
            opt.step()
            sched.step()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `model` on NCHW float32 images `x` with int64 labels `y`."""
    with torch.no_grad():
        pred = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())


def build(seed: int = 0) -> DigitsCNN:
    """A trained DigitsCNN in eval mode (same convention as the other examples' `build`)."""
    return train(seed)
