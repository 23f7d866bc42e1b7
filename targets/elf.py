"""Read the CPU architecture an ELF shared library was built for (the manifest records it)."""

from __future__ import annotations

from os import PathLike

from compiler.errors import ArtifactError

# e_machine values of the ELF header, named like Preset.elf_machine.
_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


def elf_machine(path: str | PathLike[str]) -> str:
    """'x86_64', 'aarch64' or 'arm' (or 'unknown(N)') from the e_machine field of an ELF file."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ArtifactError(f"'{path}' is not an ELF shared library; compile the model again")
    byteorder = "little" if header[5] == 1 else "big"  # EI_DATA: 1 = little-endian
    code = int.from_bytes(header[18:20], byteorder)
    return _MACHINES.get(code, f"unknown({code})")
