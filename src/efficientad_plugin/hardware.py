"""What the machine can run fast: native bf16 on this CPU, and the precision to choose from it."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512-BF16 or AMX tiles), as torch's cpuinfo reports it.

    Without it oneDNN emulates bf16 and runs far slower than fp32 (about 30x on an AVX2-only AMD EPYC), so bf16 is
    worth choosing on a CPU only when this is true. torch exposes the check only as private functions; if they go
    away, the answer is ``False`` (fp32 is always correct, only slower).
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_bf16(device: torch.device | str) -> bool:
    """bf16 autocast is the faster choice on a GPU and on CPUs with native bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def cpu_description() -> str:
    """The CPU's model name and bf16 capability, to print next to every timing."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name}, {torch.get_num_threads()} threads, {capability}, {bf16}"
