"Shared by the bench scripts: a one-line description of this machine for BENCHMARKS.md rows."
import os, platform


def machine() -> str:
    "`uname -m`, `nproc` and the CPU model from /proc/cpuinfo."
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): model = line.split(":", 1)[1].strip(); break
    except OSError: pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {model}"
