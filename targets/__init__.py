"""Target presets: which device to compile for, with which toolchain, and whether it runs here."""

from targets.presets import PRESETS, X86_BY_CAPABILITY
from targets.registry import CpuShape, Execution, Preset, first_native, host_preset, list_presets, resolve_target

__all__ = ["CpuShape", "Preset", "PRESETS", "X86_BY_CAPABILITY", "resolve_target", "first_native", "host_preset", "Execution",
           "list_presets"]
