"""A zoo architecture trained on real labels that ship with scikit-learn, for `edgec optimize`'s figures.

No labelled image set can be downloaded here, so scikit-learn's handwritten digits (8x8, 1797 images)
are scaled to SIZE x SIZE and repeated over 3 channels, and a zoo network (ResNet-18 by default, with
10 classes) is trained on the same stratified 75/25 split as the digits CNN. The result is a standard
architecture with real top-1 accuracy to keep within a band, plus the files `edgec optimize` takes:

    python -m examples.labelled_zoo --out models/     # resnet18 at 32x32, ~1-2 min on 2 cores; prints its files:
    # models/resnet18_digits-32-e8-s0-<digest>/resnet18_digits{.onnx,_eval.npz,_calibration.npz}
    edgec optimize models/resnet18_digits-*/resnet18_digits.onnx --target x86-64 \\
        --eval-data models/resnet18_digits-*/resnet18_digits_eval.npz \\
        --calibration-data models/resnet18_digits-*/resnet18_digits_calibration.npz -o out/

The files are cached by name, size, epochs, seed and this file's source (`labelled_model`).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples import digits_cnn
from examples.export import export_onnx

CALIBRATION_SAMPLES = 128


def _resnet18(num_classes: int) -> nn.Module:
    from examples.resnet18 import resnet18

    return resnet18(num_classes)


def _mobilenetv2(num_classes: int) -> nn.Module:
    from examples.mobilenetv2 import MobileNetV2

    return MobileNetV2(num_classes=num_classes)


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {"resnet18": _resnet18, "mobilenetv2": _mobilenetv2}


@dataclass(frozen=True)
class LabelledModel:
    onnx: Path
    eval_data: Path  # the test split: "input" (N, 3, S, S) and "label" (N,)
    calibration_data: Path  # CALIBRATION_SAMPLES images of the train split
    accuracy: float  # top-1 of the trained PyTorch model on the test split


def digits_images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits split as 3-channel SIZE x SIZE float32 images (bilinear upscaling), with labels."""
    x_tr, y_tr, x_te, y_te = digits_cnn.load_digits_split(seed)

    def scale(x: np.ndarray) -> np.ndarray:
        big = nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
        return big.repeat(1, 3, 1, 1).numpy()

    return scale(x_tr), y_tr, scale(x_te), y_te


def train(name: str, size: int = 32, epochs: int = 8, seed: int = 0) -> tuple[nn.Module, float]:
    """Train zoo network `name` on the scaled digits (Adam, one-cycle, the digits CNN's recipe) and
    return it in eval mode with its test top-1."""
    x_tr, y_tr, x_te, y_te = digits_images(size, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[name](digits_cnn.NUM_CLASSES)
        digits_cnn.fit(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), epochs, batch_size=64, lr=2e-3)
    model.eval()
    return model, digits_cnn.accuracy(model, x_te, y_te)


def labelled_model(name: str = "resnet18", out_dir: Path | None = None, size: int = 32, epochs: int = 8,
                   seed: int = 0) -> LabelledModel:
    """Train (once: cached in `out_dir`, default edgec's cache) and export `name` with its data files."""
    from compiler.runtime.toolchain import cache_dir

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from: {', '.join(ARCHITECTURES)}")
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    out_dir = Path(out_dir or cache_dir() / "labelled") / f"{name}_digits-{size}-e{epochs}-s{seed}-{digest}"
    files = LabelledModel(out_dir / f"{name}_digits.onnx", out_dir / f"{name}_digits_eval.npz",
                          out_dir / f"{name}_digits_calibration.npz", 0.0)
    accuracy_file = out_dir / "accuracy.txt"
    if files.onnx.exists() and accuracy_file.exists():
        return LabelledModel(files.onnx, files.eval_data, files.calibration_data, float(accuracy_file.read_text()))
    out_dir.mkdir(parents=True, exist_ok=True)
    model, accuracy = train(name, size, epochs, seed)
    x_tr, _, x_te, y_te = digits_images(size, seed)
    np.savez(files.eval_data, input=x_te, label=y_te)
    np.savez(files.calibration_data, input=x_tr[:CALIBRATION_SAMPLES])
    export_onnx(model, torch.from_numpy(x_te[:1]), files.onnx)
    accuracy_file.write_text(f"{accuracy}\n")  # last: its presence says the rest is complete
    return LabelledModel(files.onnx, files.eval_data, files.calibration_data, accuracy)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.labelled_zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="resnet18")
    parser.add_argument("--size", type=int, default=32, help="input resolution (square)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for the files (default: edgec's cache)")
    args = parser.parse_args(argv)
    files = labelled_model(args.model, args.out, args.size, args.epochs, args.seed)
    print(f"{args.model} on {args.size}x{args.size} digits: top-1 {files.accuracy:.2%} on {files.eval_data}")
    print(files.onnx)
    print(files.calibration_data)


if __name__ == "__main__":
    main()
