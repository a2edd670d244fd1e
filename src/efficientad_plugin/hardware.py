"""What the machine can run fast: native bf16 on this CPU, and the precision to choose from it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


# mallopt's parameter number for the mmap threshold (glibc's malloc.h), and glibc's largest dynamic threshold on
# 64-bit (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB x sizeof(long)), where a process that freed a 32 MB buffer already is.
_M_MMAP_THRESHOLD = -3
_GLIBC_MAX_DYNAMIC_THRESHOLD = 32 << 20


def _set_mmap_threshold(threshold_bytes: int) -> bool:
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))


@contextmanager
def large_allocations_to_mmap(threshold_bytes: int = 1 << 20) -> Iterator[bool]:
    """Inside, every allocation of ``threshold_bytes`` or more gets its own mmap, so freeing it returns it to the OS.

    Why: anomalib's greedy coreset (PatchCore's fit) allocates a few MB per iteration; on a 2-core CPU run over
    702,464 patches glibc's heap grew by about 3 MB per iteration (20 GB at 89 % of its 7,023 iterations, killed
    on a 24 GB machine). glibc raises its mmap threshold by itself after a large free, which sends those buffers
    to the heap; a fixed threshold keeps it flat (454 MB heap instead of 4.6 GB at the same point). Only inside:
    mapping every MB-sized buffer anew costs page faults that slow training. On exit the threshold goes to glibc's
    own dynamic maximum (32 MiB). Same effect as ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment, but
    scoped. Nothing in torch or anomalib offers it. Yields False where the C library is not glibc (no change).
    """
    if threshold_bytes <= 0:
        msg = f"threshold_bytes must be positive, got {threshold_bytes}."
        raise ValueError(msg)
    changed = _set_mmap_threshold(threshold_bytes)
    try:
        yield changed
    finally:
        if changed:
            _set_mmap_threshold(_GLIBC_MAX_DYNAMIC_THRESHOLD)
