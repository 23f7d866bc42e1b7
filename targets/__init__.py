"""Target presets: which device to compile for, with which toolchain, and whether it runs here."""

from targets.presets import PRESETS
from targets.registry import Execution, Preset, host_preset, list_presets, resolve_target

__all__ = ["Preset", "PRESETS", "resolve_target", "host_preset", "Execution", "list_presets"]
