"""The quick-start job: compile bundled models for this x86 CPU and a Raspberry Pi 4, run, compare, time.

    python -m examples.quickstart [--out out/quickstart] [--x86-target x86-avx512] [--arm-target cortex-a72]

1. trains the digits CNN on scikit-learn's digits and builds ResNet-18, exports both to ONNX;
2. compiles each with edgec for the most capable x86 preset this CPU runs (x86-avx512 where it has
   AVX-512 and VNNI, else x86-64), with the tuning records shipped in tuning_logs/<preset>/ (and your
   own, if you tuned: compiler/tuning/database.py), and for an ARM preset (cross-linked aarch64 .so, no
   records shipped);
3. runs the x86 builds in-process and the ARM builds with edgec's C++ runner under qemu-aarch64, and
   prints their agreement with onnxruntime and PyTorch, and the x86 builds' latency next to
   onnxruntime's: tuned (the records), and zero-trial (the same model compiled with no records at
   all: edgec's default schedules, what a model nobody tuned gets); medians, 2 threads each, the
   engines timed in alternating rounds; the ratios are the medians of the rounds' ratios.
"""

from __future__ import annotations

import os

# TVM's thread pool reads this when it starts: the same 2 threads as onnxruntime and PyTorch get.
os.environ.setdefault("TVM_NUM_THREADS", "2")

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from compiler.artifact import read_manifest
from compiler.bench import paired_latencies
from compiler.build import CompileOptions, compile_model
from compiler.frontends import load_model
from compiler.pipeline import PipelineConfig
from compiler.runtime import open_model
from targets import X86_BY_CAPABILITY, first_native, resolve_target
from targets.elf import elf_machine

console = Console(width=None if Console().is_terminal else 132)
EMULATED_SAMPLES = 20  # each emulated run starts the runner under qemu: check a subset
TIMING_ROUNDS = 5  # edgec and onnxruntime alternate in rounds; the ratio is taken per round


@dataclass(frozen=True)
class Example:
    name: str
    onnx: Path
    inputs: np.ndarray  # a batch of single-sample inputs, shape (n, *input_shape)
    torch_outputs: np.ndarray
    repeats: int


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    parser.add_argument("--x86-target", default=None,
                        help=f"default: the first of {', '.join(X86_BY_CAPABILITY)} that runs natively here")
    parser.add_argument("--arm-target", default="cortex-a72")
    args = parser.parse_args(argv)
    x86_target = args.x86_target or first_native(X86_BY_CAPABILITY).name
    args.out.mkdir(parents=True, exist_ok=True)

    table = Table(title="edgec quick start (fp32, batch 1)")
    for column in ("model", "target", "library", "kernel schedules", "max abs diff vs onnxruntime", "top-1 = PyTorch",
                   "edgec tuned p50 ms", "zero-trial p50 ms", "onnxruntime p50 ms", "onnxruntime / tuned",
                   "onnxruntime / zero-trial"):
        table.add_column(column)
    for example in (_digits(args.out), _resnet18(args.out)):
        for target in (x86_target, args.arm_target):
            table.add_row(*_compile_and_check(example, target, args.out))
    console.print(table)


def _digits(out: Path) -> Example:
    import torch

    from examples.digits_cnn import accuracy, load_digits_split, train
    from examples.export import export_onnx

    with console.status("training the digits CNN on scikit-learn's digits"):
        model = train()
    _, _, x_test, y_test = load_digits_split()
    console.print(f"digits CNN: PyTorch top-1 accuracy on {len(y_test)} test digits = {accuracy(model, x_test, y_test):.3f}")
    path = export_onnx(model, torch.from_numpy(x_test[:1]), out / "digits.onnx")
    with torch.no_grad():
        reference = model(torch.from_numpy(x_test)).numpy()
    return Example("digits CNN", path, x_test[:, None], reference[:, None], repeats=200)


def _resnet18(out: Path) -> Example:
    import torch

    from examples import resnet18
    from examples.export import export_onnx

    with console.status("building ResNet-18 (seeded weights) and exporting it to ONNX"):
        model = resnet18.build()
        x = torch.rand(resnet18.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
        path = export_onnx(model, x, out / "resnet18.onnx")
        with torch.no_grad():
            reference = model(x).numpy()
    return Example("ResNet-18", path, x.numpy()[None], reference[None], repeats=30)


def _compile_and_check(example: Example, target: str, out: Path) -> list[str]:
    preset = resolve_target(target)
    artifact = out / f"{example.onnx.stem}-{preset.name}"
    with console.status(f"compiling {example.name} for {preset.name}"):
        started = time.perf_counter()
        compile_model(load_model(example.onnx), CompileOptions(preset), artifact)
    console.print(f"compiled {example.name} for {preset.name} in {time.perf_counter() - started:.1f} s -> {artifact}")
    manifest = read_manifest(artifact)
    library = f"{elf_machine(artifact / manifest.library)} ELF"
    sources = [source.split(" (")[0] for source in (manifest.schedules or {}).values()]  # "tuned (shipped)" -> "tuned"
    tuned = ", ".join(f"{sources.count(s)} {s}" for s in sorted(set(sources), key=sources.index)) or "-"
    execution = preset.execution_here()
    if execution.mode == "compile-only":
        return [example.name, preset.name, library, tuned, f"not run here ({execution.reason})", *["-"] * 6]

    emulated = execution.mode == "qemu"
    model = open_model(artifact, "qemu" if emulated else "local")
    inputs = example.inputs[:EMULATED_SAMPLES] if emulated else example.inputs
    reference = _onnxruntime(example.onnx)
    with console.status(f"running {example.name} for {preset.name} ({execution.mode})"):
        outputs = np.stack([model.run({"input": x})["output"] for x in inputs])
        ort_outputs = np.stack([reference(x) for x in inputs])
        if emulated:  # qemu timings say nothing about the device's speed
            timings = ["-"] * 5
        else:
            timings = _timed(example, preset, artifact, model, reference)
    agreement = (outputs.argmax(-1) == example.torch_outputs[: len(outputs)].argmax(-1)).mean()
    return [example.name, f"{preset.name} ({execution.mode})", library, tuned, f"{np.abs(outputs - ort_outputs).max():.2e}",
            f"{agreement:.1%} ({len(outputs)})", *timings]


def _timed(example: Example, preset, artifact: Path, model, reference: Callable) -> list[str]:
    """Tuned, zero-trial (compiled again with no records) and onnxruntime, in the same rounds."""
    zero_trial_dir = artifact.with_name(artifact.name + "-zero-trial")
    with console.status(f"compiling {example.name} for {preset.name} with no tuning records (zero-trial)"):
        compile_model(load_model(example.onnx), CompileOptions(preset, PipelineConfig(tuning_log=None)), zero_trial_dir)
    zero_trial = open_model(zero_trial_dir, "local")
    feed = {"input": example.inputs[0]}
    timed = paired_latencies({"edgec": lambda: model.run(feed), "zero-trial": lambda: zero_trial.run(feed),
                              "onnxruntime": lambda: reference(example.inputs[0])},
                             "edgec", rounds=TIMING_ROUNDS, runs=max(1, example.repeats // TIMING_ROUNDS))
    ms = [f"{timed.median_s[name] * 1e3:.2f}" for name in ("edgec", "zero-trial", "onnxruntime")]
    zero_trial_ratio = timed.relative["onnxruntime"].median / timed.relative["zero-trial"].median
    return [*ms, f"{timed.relative['onnxruntime'].median:.2f}", f"{zero_trial_ratio:.2f}"]


def _onnxruntime(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


if __name__ == "__main__":
    main()
