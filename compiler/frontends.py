"""Model import: ONNX files, PyTorch ExportedPrograms (`.pt2`) and in-memory `nn.Module`s to Relax.

Every loader returns an `ImportedModel`: a Relax IRModule whose weights are bound as constants, plus
the names, static shapes and dtypes of its inputs and outputs. Unsupported operators are found before
conversion starts, so the error names the operator and the node instead of a TVM traceback.
Frameworks are imported lazily: importing this module imports neither onnx nor torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.errors import ModelImportError, UnsupportedOperatorError
from compiler.specs import TensorSpec

if TYPE_CHECKING:
    import onnx
    import torch
    import tvm

ONNX_OPSETS = range(7, 22)  # opsets the importer is tested on
MODEL_FORMATS = {".onnx": "onnx", ".pt2": "torch"}

InputShapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ModelSource:
    """Where an imported model came from, as recorded in the manifest."""

    format: str  # "onnx" | "torch"
    path: str | None = None
    sha256: str | None = None
    opset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.path, "sha256": self.sha256, "opset": self.opset}


@dataclass(frozen=True, eq=False)
class ImportedModel:
    """A Relax module with bound weights and the interface of its `main` function."""

    mod: tvm.IRModule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: ModelSource


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse the CLI form `NAME=1x3x224x224` into a name and a shape."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise ModelImportError(f"bad --input-shape '{text}'; write NAME=DIMS, e.g. input=1x3x224x224")
    return name, shape


def load_model(path: Path, input_shapes: InputShapes | None = None) -> ImportedModel:
    """Import an `.onnx` or `.pt2` file, choosing the loader by file extension."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"model file '{path}' does not exist")
    model_format = MODEL_FORMATS.get(path.suffix.lower())
    if model_format is None:
        known = ", ".join(MODEL_FORMATS)
        raise ModelImportError(f"cannot infer the format of '{path.name}'; use a file ending in {known}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if model_format == "onnx":
        return import_onnx(_read_onnx(path), input_shapes, path=str(path), sha256=digest)
    if input_shapes:
        raise ModelImportError("--input-shape applies to ONNX models; a .pt2 program has static shapes")
    return import_exported_program(_read_pt2(path), ModelSource("torch", str(path), digest))


# ----------------------------------------------------------------------------------------------- ONNX


def _read_onnx(path: Path) -> onnx.ModelProto:
    onnx = require_framework("onnx")
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises its own DecodeError; any failure means "not ONNX"
        raise ModelImportError(f"cannot read '{path}' as an ONNX model: {_first_line(err)}") from err


def import_onnx(
    model: onnx.ModelProto,
    input_shapes: InputShapes | None = None,
    *,
    path: str | None = None,
    sha256: str | None = None,
) -> ImportedModel:
    """Check, shape-infer and convert an ONNX model with static input shapes to Relax."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.onnx_qoperator import qoperators_as_qdq

    opset = _onnx_opset(model)
    model = _without_initializer_inputs(model)
    inputs = _onnx_inputs(model, dict(input_shapes or {}))
    model = _with_static_inputs(model, inputs)
    model = qoperators_as_qdq(model)
    _check_and_infer(model)
    _check_onnx_operators(model.graph, opset)
    try:
        mod = from_onnx(
            model,
            shape_dict={spec.name: list(spec.shape) for spec in inputs},
            dtype_dict={spec.name: spec.dtype for spec in inputs},
            opset=opset,
        )
    except (NotImplementedError, ValueError, TypeError, KeyError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        raise ModelImportError(f"TVM's ONNX importer cannot convert this model: {_first_line(err)}") from err
    output_names = [o.name for o in model.graph.output]
    source = ModelSource("onnx", path, sha256, opset)
    return ImportedModel(mod, inputs, _relax_outputs(mod, output_names), source)


def _onnx_opset(model: onnx.ModelProto) -> int:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset not in ONNX_OPSETS:
        raise ModelImportError(
            f"the model uses ONNX opset {opset}; edgec supports opsets {ONNX_OPSETS.start} to "
            f"{ONNX_OPSETS.stop - 1}: convert it with onnx.version_converter.convert_version"
        )
    return opset


def _without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Old exporters (IR version < 4) list every initializer as a graph input too: drop those."""
    initializers = {init.name for init in model.graph.initializer}
    if not any(i.name in initializers for i in model.graph.input):
        return model
    model = _copy(model)
    real_inputs = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 4 is the first to allow initializers that are not inputs
    return model


def _onnx_inputs(model: onnx.ModelProto, overrides: dict[str, Sequence[int]]) -> tuple[TensorSpec, ...]:
    from onnx import helper

    names = [i.name for i in model.graph.input]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ModelImportError(f"--input-shape names {', '.join(unknown)}, but the model's inputs are: {', '.join(names)}")
    specs = []
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tensor_type.shape.dim]
        shape = _resolve_dims(value.name, dims, overrides.get(value.name))
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(TensorSpec(value.name, shape, dtype))
    return tuple(specs)


def _resolve_dims(name: str, dims: list[int | str], override: Sequence[int] | None) -> tuple[int, ...]:
    shown = "x".join(str(d) for d in dims)
    if override is None:
        if all(isinstance(d, int) for d in dims):
            return tuple(dims)  # type: ignore[arg-type]
        example = "x".join(str(d) if isinstance(d, int) else "1" for d in dims)
        raise ModelImportError(f"input '{name}' has symbolic shape {shown}; give a static one with --input-shape {name}={example}")
    override = tuple(int(d) for d in override)
    fits = len(override) == len(dims) and all(not isinstance(d, int) or d == o for d, o in zip(dims, override))
    if not fits:
        raise ModelImportError(f"--input-shape {name}={'x'.join(map(str, override))} does not fit the model's shape {shown} for that input")
    return override


def _with_static_inputs(model: onnx.ModelProto, inputs: tuple[TensorSpec, ...]) -> onnx.ModelProto:
    """Write the static shapes into the graph so that onnx's shape inference can use them."""
    model = _copy(model)
    for value, spec in zip(model.graph.input, inputs):
        for dim, size in zip(value.type.tensor_type.shape.dim, spec.shape):
            dim.Clear()
            dim.dim_value = size
    return model


def _check_and_infer(model: onnx.ModelProto) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ModelImportError(f"the ONNX model is invalid: {_first_line(err)}") from err


def _check_onnx_operators(graph: onnx.GraphProto, opset: int) -> None:
    """Fail on the first node (subgraphs included) that TVM's ONNX frontend cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    convert_map = _get_convert_map()
    for index, node in enumerate(_onnx_nodes(graph)):
        where = f"node '{node.name}'" if node.name else f"node #{index} (unnamed)"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperatorError(
                f"unsupported ONNX operator '{node.domain}.{node.op_type}' (opset {opset}) in {where}; "
                "only the default ai.onnx domain is supported"
            )
        if node.op_type in ("Constant", "If"):
            continue
        converter = convert_map.get(node.op_type)
        try:
            supported = converter is not None and converter.get_converter(opset) is not None
        except NotImplementedError:
            supported = False
        if not supported:
            raise UnsupportedOperatorError(
                f"unsupported ONNX operator '{node.op_type}' (opset {opset}) in {where}; "
                "replace it in the model or export with a different opset"
            )


def _onnx_nodes(graph: onnx.GraphProto):
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _onnx_nodes(attr.g)
            for subgraph in attr.graphs:
                yield from _onnx_nodes(subgraph)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


# ---------------------------------------------------------------------------------------------- torch


def _read_pt2(path: Path) -> torch.export.ExportedProgram:
    torch = require_framework("torch")
    try:
        return torch.export.load(str(path))
    except Exception as err:  # zipfile, pickle and torch errors all mean "not a saved ExportedProgram"
        raise ModelImportError(f"cannot read '{path}' as a torch.export program (.pt2): {_first_line(err)}") from err


def import_torch_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> ImportedModel:
    """Export an `nn.Module` in eval mode with `torch.export` at the example inputs' shapes, then import it."""
    torch = require_framework("torch")
    program = torch.export.export(module.eval(), tuple(example_inputs))
    return import_exported_program(program, ModelSource("torch"))


def import_exported_program(program: torch.export.ExportedProgram, source: ModelSource) -> ImportedModel:
    """Convert an ExportedProgram (decomposed to core ATen) to Relax with its weights as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    program = program.run_decompositions()
    _check_torch_operators(program)
    inputs = _torch_inputs(program)
    mod = from_exported_program(program, run_ep_decomposition=False)
    output_names = [f"output{i}" for i in range(len(program.graph_signature.user_outputs))]
    return ImportedModel(mod, inputs, _relax_outputs(mod, output_names), source)


def _check_torch_operators(program: torch.export.ExportedProgram) -> None:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    supported = ExportedProgramImporter().create_convert_map()
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in supported:
            raise UnsupportedOperatorError(
                f"unsupported PyTorch operator '{node.target.__name__}' (core ATen, torch.export) in node "
                f"'{node.name}'; rewrite that part of the model or export it to ONNX"
            )


def _torch_inputs(program: torch.export.ExportedProgram) -> tuple[TensorSpec, ...]:
    torch = require_framework("torch")
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        if not all(isinstance(d, int) for d in value.shape):
            raise ModelImportError(f"input '{name}' has a dynamic shape {tuple(value.shape)}; export with static shapes")
        dtype = str(value.dtype).removeprefix("torch.")
        specs.append(TensorSpec(name, tuple(int(d) for d in value.shape), dtype))
    del torch
    return tuple(specs)


# ---------------------------------------------------------------------------------------------- shared


def _relax_outputs(mod: tvm.IRModule, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    """Read the output shapes and dtypes from `main`'s return type (one tensor or a tuple of them)."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(names) != len(fields):
        names = [f"output{i}" for i in range(len(fields))]
    specs = []
    for name, field in zip(names, fields):
        if not isinstance(field, relax.TensorType) or field.shape is None:
            raise ModelImportError(f"output '{name}' is not a tensor of static shape ({field}); edgec needs static shapes")
        specs.append(TensorSpec(name, tuple(int(d) for d in field.shape.values), str(field.dtype)))
    return tuple(specs)


# What to install for a framework that is not a dependency of edgec itself
_INSTALL_HINTS = {"torch": "pip install 'edgec[torch]'"}


def require_framework(package: str) -> Any:
    """Import a framework on first use; a missing one is a one-line error saying what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as err:
        hint = _INSTALL_HINTS.get(package, f"pip install {package}")
        raise ModelImportError(f"this model needs the '{package}' package: {hint}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
