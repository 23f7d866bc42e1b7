"""Running compiled artifacts: in-process on the host CPU (`local`)."""

from compiler.runtime.local import LocalModel, check_inputs, read_input_files, write_outputs

__all__ = ["LocalModel", "check_inputs", "read_input_files", "write_outputs"]
