"""The figures of the README: edgec against onnxruntime and PyTorch, measured in one process.

    python -m examples.benchmark [--target x86-avx512] [--rounds 7] [--runs 10] [--json out/benchmark.json]
                                 [--skip int8,prune,layout,variants]

Every latency is a median over `rounds` rounds of `runs` timed runs (after warm-up) of every engine,
all at 2 threads, batch 1. Ratios are taken round by round and given as their median over the rounds,
with the lowest and highest round ("(rounds)" columns): this machine's speed drifts between minutes,
and engines do not slow down alike (compiler.bench.paired_latencies). Sections:

- fp32: ResNet-18 and MobileNetV2 (224x224) compiled for the x86 preset (by default the most capable
  one this CPU runs: x86-avx512, else x86-64) with the tuning records a compile reads (shipped in
  tuning_logs/<preset>/, plus your own: compiler/tuning/database.py),
  against onnxruntime (CPU EP, default optimizations) and PyTorch eager; plus the fraction of this
  machine's fp32 peak (the fastest of PyTorch's and onnxruntime's 1024^3 and 2048^3 GEMMs) each model reaches
  (its direct-convolution FLOPs over its latency: Winograd does fewer multiplies, so it can pass
  100%); and, in the same rounds, the model in the layout the preset did not choose (NCHW with
  Winograd where it applies), and with direct convolutions only (where Winograd rewrote some),
  unless `--skip variants`;
- zero-trial: every example and zoo model (examples/zoo.py) compiled with no tuning records at all
  (`--untuned`: edgec's default schedules, passes/default_schedule.py) against onnxruntime, with
  the compile time, the geometric mean and the slowest ratio; ResNet-18 and MobileNetV2 also against
  their tuned build (shipped records), in the same rounds;
- tuning cost: from the tuning histories shipped beside the records, the trials and minutes it took
  the estimated latency to get within 10% of its final value;
- int8: ResNet-18 and MobileNetV2 int8 (edgec PTQ on the CPU's dot-product kernels), zero-trial,
  against edgec fp32 (zero-trial) and onnxruntime's static int8 QDQ model with the same calibration
  data, and onnxruntime's QDQ model compiled by edgec (pre-quantized input), on every x86 preset
  this CPU runs (x86-avx512: VNNI; x86-64: AVX2); where the shipped
  records tune some of its int8 kernels, a second run of the int8 and fp32 builds with the records
  (tuned against tuned) against the same onnxruntime models; the int8 architecture matrix
  (examples/int8_matrix.py), zero-trial int8 against zero-trial fp32; and every zoo model, untuned,
  int8 against fp32 and onnxruntime's int8, with its SQNR against fp32 (on the benchmark's preset);
- prune: ResNet-18 with 50% of its channels pruned, no new tuning (the kernels no record covers get
  default schedules), against the unpruned model with its tuning records;
- layout: the digits CNN in NCHW and NHWC (default schedules), the layout pass's latency effect;
- arm: the digits CNN, MobileNetV2 and ResNet-18 for cortex-a72 (fp32) and cortex-a76 (fp32 and int8
  on sdot), zero-trial, counted in guest instructions per inference under qemu at one thread (a
  speed proxy: compiler/runtime/instructions.py) against onnxruntime's aarch64 build on the same
  emulated core (examples/arm_reference.py; needs `dpkg --add-architecture arm64 && apt-get update`);
- optimize: `edgec optimize` with zero-trial kernels, a 1-point band and a 20-minute budget, on the
  digits CNN (with its fine-tune hook) and ResNet-18 trained on the digits at 32x32
  (examples/labelled_zoo.py): the chosen build, its speed-up over edgec fp32, top-1 and ECE (float,
  chosen, chosen after temperature scaling), and the search's minutes.
"""

from __future__ import annotations

import os

# TVM's thread pool reads this when it starts: the same 2 threads as onnxruntime and PyTorch get.
os.environ.setdefault("TVM_NUM_THREADS", "2")

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from compiler.bench import PairedLatencies, Spread, paired_latencies
from compiler.build import CompileOptions, compile_model
from compiler.frontends import load_model
from compiler.pipeline import PipelineConfig, run_to_tuning_point
from compiler.runtime import LocalModel
from compiler.tuning.database import shipped_root
from targets import X86_BY_CAPABILITY, Preset, first_native, resolve_target
from passes import LayoutConfig, WinogradConfig

console = Console(width=None if Console().is_terminal else 240)
THREADS = 2


@dataclass(frozen=True)
class Engine:
    name: str
    run: Callable[[], object]


def paired(engines: list[Engine], reference: str, rounds: int, runs: int) -> PairedLatencies:
    """Every engine in the same rounds; ratios to `reference` taken round by round (compiler.bench)."""
    return paired_latencies({e.name: e.run for e in engines}, reference, rounds, runs)


def _ratio_cells(label: str, spread: Spread) -> dict[str, object]:
    return {label: spread.median, f"{label} (rounds)": f"{spread.low:.2f}-{spread.high:.2f}"}


# Square GEMM sizes the peak is taken over: 1024^3's operands (12 MB) stay in a server CPU's L3,
# 2048^3's (48 MB) do not: on the 2-core Zen 5, onnxruntime's direct ResNet-18 convs ran faster than
# its 2048^3 GEMM
GEMM_SIZES = (1024, 2048)


@dataclass(frozen=True)
class Peak:
    engine: Engine
    gflop: float  # per run of the engine


def gemm_peak(sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 5) -> Peak:
    """The machine's fp32 peak: the fastest (GFLOP/s) of square GEMMs of `sizes` on THREADS threads, by
    PyTorch (MKL) and by onnxruntime (MLAS), timed in the same rounds as the models so that it shares
    their minutes. Both libraries are tried because MKL takes a slow path on AMD CPUs (190 GFLOP/s on
    a 2-core Zen 5 with AVX-512, where MLAS reaches 395)."""
    import torch
    from onnx import TensorProto, helper

    candidates = []
    for size in sizes:
        a, b = torch.rand(size, size), torch.rand(size, size)
        feeds = {"A": a.numpy(), "B": b.numpy()}
        square = [size, size]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, square) for n in "AB"],
                                  [helper.make_tensor_value_info("C", TensorProto.FLOAT, square)])
        session = onnxruntime_session(  # IR 9: what onnxruntime reads, whichever onnx made the graph
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString())
        gflop = 2 * size ** 3 / 1e9
        candidates += [Peak(Engine(f"GEMM {size}^3 (PyTorch)", lambda a=a, b=b: torch.mm(a, b)), gflop),
                       Peak(Engine(f"GEMM {size}^3 (onnxruntime)", lambda s=session, f=feeds: s.run(None, f)), gflop)]
    timed = paired([c.engine for c in candidates], candidates[0].engine.name, rounds=repeats, runs=1)
    return max(candidates, key=lambda c: c.gflop / timed.median_s[c.engine.name])


def model_gflop(onnx_path: Path, preset: Preset) -> float:
    """FLOPs of one inference, summed over the kernels MetaSchedule would tune (calls x kernel FLOPs)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    target = preset.tvm_target()
    # the direct convolutions' FLOPs (Winograd computes fewer; the peak fraction counts the model's own)
    config = PipelineConfig(tuning_log=None, winograd=WinogradConfig(enabled=False)).for_preset(preset)
    mod = run_to_tuning_point(load_model(onnx_path).mod, target, config)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    return sum(int(t.weight) * float(estimate_tir_flops(t.dispatched[0])) for t in tasks) / 1e9


def onnxruntime_session(model: Path | bytes):
    """onnxruntime's CPU EP on THREADS threads, default optimizations, for a model file or its bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def onnxruntime_engine(path: Path, x: np.ndarray, name: str = "onnxruntime") -> Engine:
    session = onnxruntime_session(path)
    feed = {session.get_inputs()[0].name: x}
    return Engine(name, lambda: session.run(None, feed))


def torch_engine(model, x: np.ndarray) -> Engine:
    import torch

    tensor = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return model(tensor)

    return Engine("PyTorch eager", run)


def edgec_engine(artifact: Path, x: np.ndarray, name: str = "edgec") -> Engine:
    """Numpy in, numpy out, like onnxruntime's session.run."""
    model = LocalModel(artifact)
    feed = {model.manifest.inputs[0].name: x}
    return Engine(name, lambda: model.run(feed))


def compile_onnx(path: Path, out: Path, preset: Preset, **pipeline) -> Path:
    config = PipelineConfig(**pipeline)
    compile_model(load_model(path), CompileOptions(preset, config), out)
    return out


def fp32_section(work: Path, args) -> list[dict]:
    from examples.export import example_model, export_onnx

    peak = gemm_peak()
    gemm, gemm_gflop = peak.engine, peak.gflop
    console.print(f"fp32 peak: {gemm.name}, the fastest of {', '.join(f'{n}^3' for n in GEMM_SIZES)} by PyTorch "
                  "and onnxruntime; timed in every model's rounds")
    rows = []
    for name in args.models:
        model, x_tensor = example_model(name)
        x = x_tensor.numpy()
        onnx_path = export_onnx(model, x_tensor, work / f"{name}.onnx")
        with console.status(f"compiling {name} for {args.preset.name} with its tuning records"):
            artifact = compile_onnx(onnx_path, work / f"{name}-fp32", args.preset)
        layout = _phase(artifact, "layout")["settings"]["layout"]
        other = {"NCHW": "NHWC", "NHWC": "NCHW"}[layout]  # the layout the preset did not choose, same Winograd choice
        engines = [edgec_engine(artifact, x), onnxruntime_engine(onnx_path, x), torch_engine(model, x), gemm]
        winograd_layers = _phase_report(artifact, "winograd").get("winograd_layers", 0)
        variants = "variants" not in args.skip
        if variants:
            with console.status(f"compiling {name} with --layout {other}"):
                relaid = compile_onnx(onnx_path, work / f"{name}-{other}", args.preset, layout=LayoutConfig(other))
            engines.append(edgec_engine(relaid, x, f"edgec {other}"))
        if variants and winograd_layers:  # the same build with direct convolutions only: what Winograd brought
            with console.status(f"compiling {name} with --no-winograd"):
                direct = compile_onnx(onnx_path, work / f"{name}-direct", args.preset, winograd=WinogradConfig(enabled=False))
            engines.append(edgec_engine(direct, x, "edgec direct conv"))
        with console.status(f"timing {name}"):
            timed = paired(engines, "edgec", args.rounds, args.runs)
        latency, relative = timed.median_s, timed.relative
        gflop = model_gflop(onnx_path, args.preset)
        tuning = json.loads((artifact / "manifest.json").read_text())["tuning"]
        rows.append({
            "model": name, "gflop": gflop, "kernels_tuned": f"{tuning['tuned']} of {tuning['tasks']}" if tuning else "0",
            **{f"{k} ms": v * 1e3 for k, v in latency.items()},
            **_ratio_cells("onnxruntime / edgec", relative["onnxruntime"]),
            **_ratio_cells("PyTorch / edgec", relative["PyTorch eager"]),
            "winograd convs": winograd_layers,
            "direct conv / winograd": relative["edgec direct conv"].median if variants and winograd_layers else None,
            "layout": layout,
            "other layout / edgec": relative[f"edgec {other}"].median if variants else None,
            "peak GFLOP/s": gemm_gflop / latency[gemm.name],
            # (model GFLOP / model time) / (GEMM GFLOP / GEMM time), from the round-by-round time ratios
            "edgec % of peak": 100 * gflop / gemm_gflop * relative[gemm.name].median,
            "onnxruntime % of peak": 100 * gflop / gemm_gflop * relative[gemm.name].median / relative["onnxruntime"].median,
        })
    return rows


def _phase(artifact: Path, phase: str) -> dict:
    """The manifest's entry for `phase` (its passes, settings and report), {} if it did not run."""
    passes = json.loads((artifact / "manifest.json").read_text())["passes"]
    return next((p for p in passes if p["phase"] == phase), {})


def _phase_report(artifact: Path, phase: str) -> dict:
    return _phase(artifact, phase).get("report") or {}


# The zero-trial section's models: examples (224x224 but the digits CNN) and every zoo architecture
ZERO_TRIAL_EXAMPLES = ("resnet18", "mobilenetv2", "digits")
TUNED_TOO = ("resnet18", "mobilenetv2")  # models whose tuned build is timed beside the zero-trial one


def zero_trial_section(work: Path, args) -> list[dict]:
    import time

    from examples.export import example_model, export_onnx
    from examples.zoo import ZOO, export_zoo_model, zoo_model

    rows = []
    names = [n for n in (*ZERO_TRIAL_EXAMPLES, *ZOO) if args.zero_trial_models is None or n in args.zero_trial_models]
    for name in names:
        if name in ZOO:
            onnx_path, (model, x_tensor) = export_zoo_model(name), zoo_model(name)
        else:
            model, x_tensor = example_model(name)
            onnx_path = export_onnx(model, x_tensor, work / f"{name}-zero-trial.onnx")
        x = x_tensor.numpy()
        with console.status(f"compiling {name} for {args.preset.name} with no tuning records"):
            start = time.monotonic()
            untuned = compile_onnx(onnx_path, work / f"{name}-untuned", args.preset, tuning_log=None)
            compile_s = time.monotonic() - start
        schedules = json.loads((untuned / "manifest.json").read_text())["schedules"] or {}
        engines = [edgec_engine(untuned, x, "edgec zero-trial"), onnxruntime_engine(onnx_path, x)]
        if name in TUNED_TOO:
            with console.status(f"compiling {name} with its tuning records"):
                engines.append(edgec_engine(compile_onnx(onnx_path, work / f"{name}-tuned", args.preset), x, "edgec tuned"))
        with console.status(f"timing {name}"):
            timed = paired(engines, "edgec zero-trial", args.rounds, args.runs)
        rows.append({"model": name, "compile s": compile_s, "kernels": len(schedules),
                     "naive kernels": sum(source == "naive" for source in schedules.values()),
                     **{f"{k} ms": v * 1e3 for k, v in timed.median_s.items()},
                     **_ratio_cells("onnxruntime / zero-trial", timed.relative["onnxruntime"]),
                     "tuned / zero-trial": timed.relative["edgec tuned"].median if name in TUNED_TOO else None})
    ratios = [row["onnxruntime / zero-trial"] for row in rows]
    if ratios:
        rows.append({"model": "geometric mean", "onnxruntime / zero-trial": float(np.exp(np.mean(np.log(ratios)))),
                     "onnxruntime / zero-trial (rounds)": f"slowest: {min(ratios):.2f}"})
    return rows


def tuning_cost_section(histories: list[Path]) -> list[dict]:
    rows = []
    for path in histories:
        points = _chained([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        complete = [p for p in points if p["kernels_measured"] == p["kernels"]]
        if not complete:
            continue
        final = complete[-1]["estimated_ms"]
        first = next(p for p in complete if p["estimated_ms"] <= 1.1 * final)
        rows.append({"history": path.name, "final estimate ms": final, "trials in all": complete[-1]["trials"],
                     "minutes in all": complete[-1]["elapsed_s"] / 60, "trials to within 10%": first["trials"],
                     "minutes to within 10%": first["elapsed_s"] / 60})
    return rows


def _chained(points: list[dict]) -> list[dict]:
    """History points of successive runs (resumes, --refine) on one clock and one trial count."""
    chained, offset_s, offset_trials, last = [], 0.0, 0, None
    for point in points:
        if last is not None and point.get("run") != last.get("run"):
            offset_s, offset_trials = offset_s + last["elapsed_s"], offset_trials + last["trials"]
        chained.append({**point, "elapsed_s": point["elapsed_s"] + offset_s, "trials": point["trials"] + offset_trials})
        last = point
    return chained


INT8_MODELS = ("resnet18", "mobilenetv2")


def int8_section(work: Path, args) -> list[dict]:
    """int8 (edgec PTQ, the preset's dot-product kernels) against edgec fp32 and onnxruntime's static
    int8 QDQ model (same calibration data), per model and per x86 preset this CPU runs; zero-trial
    (no records) and, where the preset's records cover the int8 kernels, tuned. The QDQ model compiled
    by edgec (zero-trial) runs in the zero-trial rounds: pre-quantized models get the same kernels."""
    from examples.export import example_model, export_onnx
    from examples.ort_quantize import quantize_with_onnxruntime
    from passes import QuantizeConfig

    rows = []
    presets = [resolve_target(name) for name in X86_BY_CAPABILITY]
    presets = [p for p in presets if p.execution_here().mode == "native"]
    for name in INT8_MODELS:
        model, x_tensor = example_model(name)
        x = x_tensor.numpy()
        onnx_path = export_onnx(model, x_tensor, work / f"{name}-int8-source.onnx")
        rng = np.random.default_rng(0)
        calibration = [rng.random(x.shape, dtype=np.float32) for _ in range(8)]
        with console.status(f"onnxruntime static int8 quantization of {name} (QDQ, per-channel)"):
            ort_int8 = quantize_with_onnxruntime(onnx_path, work / f"{name}-ort-int8.onnx",
                                                 ({"input": c} for c in calibration))
        config = QuantizeConfig(tuple({"input": c} for c in calibration), "percentile")
        for preset in presets:
            with console.status(f"compiling {name} fp32 and int8 for {preset.name}, zero-trial and with records"):
                builds = {"fp32": compile_onnx(onnx_path, work / f"{name}-{preset.name}-fp32", preset, tuning_log=None),
                          "int8": compile_onnx(onnx_path, work / f"{name}-{preset.name}-int8", preset, tuning_log=None,
                                               quantize=config),
                          "int8 records": compile_onnx(onnx_path, work / f"{name}-{preset.name}-int8-records", preset,
                                                       quantize=config),
                          "fp32 records": compile_onnx(onnx_path, work / f"{name}-{preset.name}-fp32-records", preset),
                          # onnxruntime's own QDQ file, compiled as a user who quantized with it would
                          "int8 from QDQ": compile_onnx(ort_int8, work / f"{name}-{preset.name}-qdq", preset,
                                                        tuning_log=None)}
            manifest = json.loads((builds["int8"] / "manifest.json").read_text())
            on_dot = sum("+" in source for source in manifest["schedules"].values())
            tuned = json.loads((builds["int8 records"] / "manifest.json").read_text())["tuning"]
            ort = [onnxruntime_engine(ort_int8, x, "onnxruntime int8"), onnxruntime_engine(onnx_path, x, "onnxruntime fp32")]
            engines = [edgec_engine(builds["int8"], x, "edgec int8"), edgec_engine(builds["fp32"], x, "edgec fp32"),
                       edgec_engine(builds["int8 from QDQ"], x, "edgec on the QDQ model"), *ort]
            with console.status(f"timing {name} int8 on {preset.name}, zero-trial"):
                timed = paired(engines, "edgec int8", args.rounds, args.runs)
            row = {"model": name, "preset": preset.name,
                   "kernels on dot product": f"{on_dot} of {len(manifest['schedules'])}",
                   **{f"{k} ms": v * 1e3 for k, v in timed.median_s.items()},
                   **_ratio_cells("edgec fp32 / edgec int8", timed.relative["edgec fp32"]),
                   **_ratio_cells("onnxruntime int8 / edgec int8", timed.relative["onnxruntime int8"]),
                   **_ratio_cells("edgec on the QDQ model / edgec int8", timed.relative["edgec on the QDQ model"]),
                   "int8 kernels tuned": f"{tuned['tuned']} of {tuned['tasks']}" if tuned else "0"}
            if tuned and tuned["tuned"]:  # both edgec builds with the shipped records, in a run of their own
                engines = [edgec_engine(builds["int8 records"], x, "edgec int8 tuned"),
                           edgec_engine(builds["fp32 records"], x, "edgec fp32 tuned"), *ort]
                with console.status(f"timing {name} int8 on {preset.name}, with records"):
                    timed = paired(engines, "edgec int8 tuned", args.rounds, args.runs)
                row.update({f"{k} ms": v * 1e3 for k, v in timed.median_s.items() if "tuned" in k},
                           **_ratio_cells("edgec fp32 tuned / edgec int8 tuned", timed.relative["edgec fp32 tuned"]),
                           **_ratio_cells("onnxruntime int8 / edgec int8 tuned", timed.relative["onnxruntime int8"]))
            rows.append(row)
    return rows + int8_matrix_rows(work, args, presets) + int8_zoo_rows(work, args)


def int8_matrix_rows(work: Path, args, presets: list) -> list[dict]:
    """The int8 architecture matrix (examples/int8_matrix.py, 32x32 inputs): zero-trial int8 against
    zero-trial fp32 per model and native x86 preset (`--quantize int8` must never be slower)."""
    from examples.int8_matrix import MODELS, export_matrix_model, matrix_inputs
    from passes import QuantizeConfig

    rows = []
    calibration = tuple({"input": x[None]} for x in matrix_inputs(16, seed=2))
    x = matrix_inputs(1, seed=3)
    for name in MODELS:
        onnx_path = export_matrix_model(name, work / f"matrix-{name}.onnx")
        for preset in presets:
            with console.status(f"compiling {name} fp32 and int8 for {preset.name}"):
                fp32 = compile_onnx(onnx_path, work / f"matrix-{name}-{preset.name}-fp32", preset, tuning_log=None)
                int8 = compile_onnx(onnx_path, work / f"matrix-{name}-{preset.name}-int8", preset, tuning_log=None,
                                    quantize=QuantizeConfig(calibration, "percentile"))
            with console.status(f"timing {name} int8 on {preset.name}"):
                timed = paired([edgec_engine(int8, x, "edgec int8"), edgec_engine(fp32, x, "edgec fp32")],
                               "edgec int8", args.rounds, args.runs)
            rows.append({"model": f"matrix: {name}", "preset": preset.name,
                         **{f"{k} ms": v * 1e3 for k, v in timed.median_s.items()},
                         **_ratio_cells("edgec fp32 / edgec int8", timed.relative["edgec fp32"])})
    return rows


def int8_zoo_rows(work: Path, args) -> list[dict]:
    """Architectures nothing was tuned for (examples/zoo.py), as a new user quantizes them: zero-trial
    int8 against zero-trial fp32 and onnxruntime's static int8 QDQ model (same 8 calibration samples),
    on the benchmark's preset, with the int8 build's SQNR against its fp32 build's outputs."""
    from compiler.evaluate import sqnr_db
    from examples.ort_quantize import quantize_with_onnxruntime
    from examples.zoo import ZOO, export_zoo_model, zoo_model
    from passes import QuantizeConfig

    rows = []
    for name in [n for n in ZOO if args.int8_zoo_models is None or n in args.int8_zoo_models]:
        onnx_path, (_, x_tensor) = export_zoo_model(name), zoo_model(name)
        x = x_tensor.numpy()
        rng = np.random.default_rng(0)
        calibration = [rng.random(x.shape, dtype=np.float32) for _ in range(8)]  # as the inputs: uniform [0, 1)
        with console.status(f"quantizing {name} with edgec and onnxruntime, compiling for {args.preset.name}"):
            fp32 = compile_onnx(onnx_path, work / f"zoo-{name}-fp32", args.preset, tuning_log=None)
            int8 = compile_onnx(onnx_path, work / f"zoo-{name}-int8", args.preset, tuning_log=None,
                                quantize=QuantizeConfig(tuple({"input": c} for c in calibration), "percentile"))
            ort_int8 = quantize_with_onnxruntime(onnx_path, work / f"zoo-{name}-ort-int8.onnx",
                                                 ({"input": c} for c in calibration))
        engines = [edgec_engine(int8, x, "edgec int8"), edgec_engine(fp32, x, "edgec fp32"),
                   onnxruntime_engine(ort_int8, x, "onnxruntime int8")]
        ours, reference = (next(iter(engine.run().values())) for engine in engines[:2])
        layers = [p for p in json.loads((int8 / "manifest.json").read_text())["passes"] if p["phase"] == "quantize"]
        quantized = [layer["quantized"] for layer in layers[0]["report"]["layers"]]
        with console.status(f"timing {name} int8 on {args.preset.name}"):
            timed = paired(engines, "edgec int8", args.rounds, args.runs)
        rows.append({"model": f"zoo: {name}", "preset": args.preset.name,
                     "layers int8": f"{sum(quantized)} of {len(quantized)}",
                     **{f"{k} ms": v * 1e3 for k, v in timed.median_s.items()},
                     **_ratio_cells("edgec fp32 / edgec int8", timed.relative["edgec fp32"]),
                     **_ratio_cells("onnxruntime int8 / edgec int8", timed.relative["onnxruntime int8"]),
                     "SQNR vs fp32 dB": sqnr_db([ours], [reference])})
    return rows


def prune_section(work: Path, args) -> list[dict]:
    from examples.export import example_model, export_onnx
    from passes import PruneConfig

    model, x_tensor = example_model("resnet18")
    x = x_tensor.numpy()
    onnx_path = export_onnx(model, x_tensor, work / "resnet18-prune-source.onnx")
    with console.status("compiling ResNet-18 unpruned (tuned) and 50% pruned (no new tuning)"):
        dense = compile_onnx(onnx_path, work / "resnet18-dense", args.preset)
        pruned = compile_onnx(onnx_path, work / "resnet18-pruned", args.preset, prune=PruneConfig(0.5))
    report = _phase_report(pruned, "prune")
    engines = [edgec_engine(dense, x, "unpruned tuned"), edgec_engine(pruned, x, "pruned 50%")]
    with console.status("timing pruning"):
        timed = paired(engines, "pruned 50%", args.rounds, args.runs)
    latency = timed.median_s
    return [{"model": "resnet18", "GFLOP before": report["flops_before"] / 1e9,
             "GFLOP after": report["flops_after"] / 1e9,
             **{f"{k} ms": v * 1e3 for k, v in latency.items()},
             "speed-up": timed.relative["unpruned tuned"].median}]


def layout_section(work: Path, args) -> list[dict]:
    from examples.export import example_model, export_onnx

    model, x_tensor = example_model("digits")
    x = x_tensor.numpy()
    onnx_path = export_onnx(model, x_tensor, work / "digits-layout.onnx")
    artifacts = {layout: compile_onnx(onnx_path, work / f"digits-{layout}", args.preset, tuning_log=None, layout=LayoutConfig(layout))
                 for layout in ("NCHW", "NHWC")}
    engines = [edgec_engine(path, x, layout) for layout, path in artifacts.items()]
    timed = paired(engines, "NHWC", args.rounds, args.runs * 10)
    return [{"model": "digits", **{f"{k} ms": v * 1e3 for k, v in timed.median_s.items()},
             "NCHW / NHWC": timed.relative["NCHW"].median}]


# model -> steady-state runs counted: more for the digits CNN, whose ~0.4 M instructions per run
# are within reach of onnxruntime's per-call variation (5% at 20 runs, 30% at 3)
ARM_MODELS = {"digits": 20, "mobilenetv2": 3, "resnet18": 3}


def arm_section(work: Path, args) -> list[dict]:
    """ARM builds without a board: guest instructions per inference under qemu at one thread
    (compiler/runtime/instructions.py), edgec's zero-trial cortex-a72 fp32 builds against onnxruntime's
    aarch64 build on the same emulated core (examples/arm_reference.py), and cortex-a76 int8 (sdot)
    against its own fp32 build. A proxy for speed: counts, not times."""
    from compiler.bench import count_instructions
    from examples.arm_reference import count_onnxruntime
    from examples.export import example_model, export_onnx
    from passes import QuantizeConfig

    rows = []
    a72, a76 = resolve_target("cortex-a72"), resolve_target("cortex-a76")
    for name, runs in ARM_MODELS.items():
        model, x_tensor = example_model(name)
        x = x_tensor.numpy()
        onnx_path = export_onnx(model, x_tensor, work / f"{name}-arm.onnx")
        calibration = tuple({"input": x + 0.1 * np.random.default_rng(i).standard_normal(x.shape).astype(np.float32)}
                            for i in range(4))
        with console.status(f"compiling {name} for cortex-a72 (fp32) and cortex-a76 (fp32, int8), no records"):
            builds = {"a72 fp32": compile_onnx(onnx_path, work / f"{name}-a72", a72, tuning_log=None),
                      "a76 fp32": compile_onnx(onnx_path, work / f"{name}-a76", a76, tuning_log=None),
                      "a76 int8": compile_onnx(onnx_path, work / f"{name}-a76-int8", a76, tuning_log=None,
                                               quantize=QuantizeConfig(calibration, "percentile"))}
        with console.status(f"counting {name}'s instructions under qemu (edgec, then onnxruntime aarch64)"):
            counts = {label: count_instructions(path, runs).per_run for label, path in builds.items()}
            reference, _ = count_onnxruntime(onnx_path, [x], "cortex-a72", runs)
        rows.append({"model": name, "onnxruntime a72 M": reference.per_run / 1e6,
                     **{f"edgec {label} M": value / 1e6 for label, value in counts.items()},
                     "onnxruntime / edgec, a72": reference.per_run / counts["a72 fp32"],
                     "a76 fp32 / int8": counts["a76 fp32"] / counts["a76 int8"]})
    return rows


def optimize_section(work: Path, args) -> list[dict]:
    """`edgec optimize` as a user runs it, zero-trial (no tuning records), a 1-point band, 20-minute
    budget: the digits CNN (with its fine-tune hook) and ResNet-18 trained on the digits scaled to 32x32
    (examples/labelled_zoo.py: a zoo architecture with real labels). The speed-up of the chosen build is
    over edgec's own fp32 build, from interleaved rounds in the search's process (compiler/optimize.py)."""
    from compiler.evaluate import load_eval_data
    from compiler.frontends import load_model
    from compiler.optimize import EvalSet, OptimizeOptions, optimize
    from examples import digits_cnn
    from examples.export import example_model, export_onnx
    from examples.labelled_zoo import labelled_model

    model, x_tensor = example_model("digits")
    x_train, _, x_test, y_test = digits_cnn.load_digits_split(0)
    digits = {"model": export_onnx(model, x_tensor, work / "digits-optimize.onnx"), "eval": work / "digits-eval.npz",
              "calibration": work / "digits-calibration.npz", "hook": "examples.prune_finetune:finetune_hook"}
    np.savez(digits["eval"], input=x_test, label=y_test)
    np.savez(digits["calibration"], input=x_train[:100])
    with console.status("training ResNet-18 on the digits at 32x32 (cached after the first time)"):
        zoo = labelled_model("resnet18")
    cases = {"digits": digits,
             "resnet18 (digits 32x32)": {"model": zoo.onnx, "eval": zoo.eval_data, "calibration": zoo.calibration_data,
                                         "hook": None}}
    rows = []
    for name, files in cases.items():
        specs = load_model(files["model"]).inputs
        samples, labels = load_eval_data(files["eval"], specs)
        calibration, _ = load_eval_data(files["calibration"], specs, what="calibration data")
        options = OptimizeOptions(args.preset, 0.01, tuple(calibration), str(files["calibration"]), time_budget_s=20 * 60,
                                  finetune_hook=files["hook"], tuning_log=None)
        with console.status(f"edgec optimize {name} for {args.preset.name}"):
            report = optimize(files["model"], options, EvalSet(tuple(samples), labels, str(files["eval"])),
                              work / f"optimize-{name.split()[0]}")
        chosen, cal = report.chosen, report.calibration or {}
        rows.append({"model": name, "candidates": len(report.results),
                     "timed": sum(r.latency_ms is not None for r in report.results),
                     "chosen": chosen.candidate.name if chosen else None,
                     "fp32 ms": report.fp32.latency_ms if report.fp32 else None,
                     "chosen ms": chosen.latency_ms if chosen else None,
                     "x fp32": report.speedup(chosen) if chosen else None,
                     "float top-1": report.reference["top1"], "chosen top-1": chosen.top1 if chosen else None,
                     "float ECE": report.reference["ece"], "chosen ECE": cal.get("ece_before"),
                     "ECE after T": cal.get("ece_after"), "search min": report.elapsed_s / 60})
    return rows


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "" if value is None else str(value)


def print_rows(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    table = Table(title=title)
    columns = list(dict.fromkeys(column for row in rows for column in row))  # rows may lack some (engines per model)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(prog="python -m examples.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2", type=lambda s: s.split(","))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip", default="", type=lambda s: set(filter(None, s.split(","))),
                        help="sections to leave out: fp32, zero-trial, tuning, int8, prune, layout, arm, optimize; and variants: the fp32 "
                             "rows' builds in the other layout and with direct convs only (untuned: slow)")
    parser.add_argument("--target", help=f"x86 preset to compile for (default: the first of "
                                          f"{', '.join(X86_BY_CAPABILITY)} that runs natively here)")
    parser.add_argument("--histories", type=Path, nargs="*",
                        help="tuning histories for the tuning-cost section (default: tuning_logs/<preset>/history-*.jsonl)")
    parser.add_argument("--zero-trial-models", type=lambda s: s.split(","),
                        help="the zero-trial section's models (default: every example and zoo model)")
    parser.add_argument("--int8-zoo-models", type=lambda s: s.split(","),
                        help="the int8 section's zoo models (default: every zoo model)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.preset = resolve_target(args.target) if args.target else first_native(X86_BY_CAPABILITY)
    if args.histories is None:
        args.histories = sorted((shipped_root() / args.preset.name).glob("history-*.jsonl"))
    console.print(f"target preset: {args.preset.name} ({args.preset.execution_here().reason})")
    torch.set_num_threads(THREADS)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        work = Path(tmp)
        sections = [("fp32", "fp32, batch 1, medians (ratios > 1: edgec is faster)", fp32_section),
                    ("zero-trial", "zero-trial (no tuning records), batch 1 (ratios > 1: edgec is faster)", zero_trial_section),
                    ("tuning", "tuning cost (estimates from the tuning process)", lambda w, a: tuning_cost_section(a.histories)),
                    ("int8", "int8 (ratios > 1: edgec int8 is faster)", int8_section),
                    ("prune", "structured pruning, ResNet-18", prune_section),
                    ("layout", "conv layout, digits CNN", layout_section),
                    ("arm", "ARM under qemu: guest instructions per inference, 1 thread (a proxy; ratios > 1: edgec "
                            "executes fewer)", arm_section),
                    ("optimize", "edgec optimize, zero-trial, 1-point band (x fp32: the chosen build over edgec fp32)",
                     optimize_section)]
        for key, title, section in sections:
            if key in args.skip:
                continue
            results[key] = section(work, args)
            print_rows(title, results[key])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
