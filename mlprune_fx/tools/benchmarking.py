"""Side-by-side timing and a description of the machine, for benchmark printouts."""

from __future__ import annotations

import platform
import subprocess

from mlprune_fx.runtime.timing import cpu_description, session_opener, time_sessions, time_side_by_side

__all__ = [
    "cpu_description", "machine_header", "markdown_table", "session_opener", "time_sessions", "time_side_by_side", "versions",
]


def versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        gxx = subprocess.run(["g++", "--version"], capture_output=True, text=True, timeout=10).stdout
        out["g++"] = gxx.splitlines()[0] if gxx else "n/a"
    except (OSError, subprocess.SubprocessError):
        out["g++"] = "n/a"
    return out


def machine_line() -> str:
    """The CPU a timing ran on: speed-ups differ by CPU (int8 most), so timings kept for later record it."""
    cpu = cpu_description()
    return f"{cpu['cpu']}, {cpu['cores']} cores, flags: {cpu['flags']}"


def machine_header(threads: int) -> str:
    ver = versions()
    return (
        f"machine: {machine_line()}; threads used: {threads}\n"
        + "versions: " + ", ".join(f"{k} {v}" for k, v in ver.items())
    )


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
