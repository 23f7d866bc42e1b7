"""Shared test helpers: run a Relax module or one kernel on the host CPU; drive the `edgec` command."""

from __future__ import annotations

import json

import numpy as np


def run_relax(mod, *inputs: np.ndarray) -> list[np.ndarray]:
    """Compile `mod` for the host and return its outputs for `inputs` (in `main`'s parameter order)."""
    from passes.quantize import run_on_host

    names = [param.name for param in mod["main"].params]
    return next(run_on_host(mod, [dict(zip(names, inputs))]))


def fuse_for_cpu(mod):
    """`mod` legalized to TIR and fused into kernels as a CPU compile does it (TVM's `legalize-fuse` phase)."""
    import tvm
    from tvm import relax

    with tvm.target.Target({"kind": "llvm"}) as target:
        return tvm.transform.Sequential(list(relax.backend.cpu_generic.pipeline.legalize_passes(target)))(mod)


def run_kernel(module, target, args: list[np.ndarray]) -> np.ndarray:
    """Build a one-kernel module (`main`) for `target` and run it: `args` are its inputs then an
    output of the right shape, whose computed value is returned."""
    import tvm

    tensors = [tvm.runtime.tensor(a) for a in args[:-1]] + [tvm.runtime.tensor(np.zeros_like(args[-1]))]
    tvm.compile(module, target=target)["main"](*tensors)
    return tensors[-1].numpy()


def op_names(mod) -> set[str]:
    """Names of every Relax operator called in `mod`'s Relax functions."""
    import tvm
    from tvm import relax

    names: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.add(expr.op.name)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return names


def edgec(*args: object, expect: int = 0) -> str:
    """Invoke the CLI in-process; no traceback may reach the user, and the exit code must be `expect`."""
    from typer.testing import CliRunner

    from compiler.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exit_code == expect, result.output
    return result.output


def edgec_json(*args: object) -> object:
    """Invoke the CLI with --json: its stdout (warnings go to stderr) is one JSON document, printed the
    way every --json prints (indented by two), which is returned parsed."""
    from typer.testing import CliRunner

    from compiler.cli import app

    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert result.stdout == json.dumps(document, indent=2) + "\n", result.stdout
    return document


def one_line_error(*args: object) -> str:
    """Invoke the CLI expecting a user error: exit code 2 and a single `error: ...` line."""
    output = edgec(*args, expect=2).strip()
    assert output.startswith("error: ") and "\n" not in output, output
    return output
