"""Shared helpers for the benchmarks: append a result line to ``results.jsonl``, print a table.

Every benchmark calls ``record(name, results)`` once at the end. Each call appends exactly one
JSON line (never rewrites earlier ones) holding the numbers plus the context needed to compare
runs: git commit (with "-dirty" when the work tree has changes), UTC date, machine and versions.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS_PATH = HERE / "results.jsonl"
CONTENTION_WARNING = 0.8  # cpu_share below this: other work took the cores during the run
_START_WALL = time.perf_counter()  # fallback for the process start where /proc is not there


def git_commit(ignore: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse --short HEAD`` of the repository holding the benchmarks, "-dirty" appended
    when tracked or untracked files differ from HEAD (``ignore``, the results file itself, does not
    count); None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        spec = [":(top)"]
        if ignore is not None:
            rel = os.path.relpath(Path(ignore).resolve(), Path(top).resolve())
            if not rel.startswith(".."):
                spec.append(f":(top,exclude){Path(rel).as_posix()}")
        status = git("status", "--porcelain", "--", *spec)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if status else "")


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is often empty on Linux)."""
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # load at the time of recording (1, 5, 15 min): other work on a shared machine skews timings
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - every benchmark imports torch
        info["torch_threads"] = None
    return info


def _process_age() -> float | None:
    """Seconds since this process started (Linux), None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_share() -> dict[str, float]:
    """CPU time this process (and its finished children) got, against what its threads could have had
    since it started.

    ``cpu_share`` near 1 means the process had the cores to itself (torch's worker threads spin
    while waiting); well below 1 means other work on the machine took cores: timings are suspect.
    """
    wall = _process_age() or time.perf_counter() - _START_WALL
    threads = machine_info()["torch_threads"] or 1
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # children: e.g. memory subprocesses
        usage = resource.getrusage(who)
        cpu += usage.ru_utime + usage.ru_stime
    return {"process_cpu_s": round(cpu, 2), "process_wall_s": round(wall, 2),
            "cpu_share": round(cpu / (wall * threads), 3) if wall > 0 else None}


class CpuMeter:
    """The cpu share of this process over a stretch of code (see ``cpu_share``)::

        meter = CpuMeter()
        ...timed work...
        share = meter.share()
    """

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = usage.ru_utime + usage.ru_stime

    def share(self) -> float | None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - self.wall0
        threads = machine_info()["torch_threads"] or 1
        cpu = usage.ru_utime + usage.ru_stime - self.cpu0
        return round(cpu / (wall * threads), 3) if wall > 0 else None


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "dsee": _version("dsee"),
    }


def record(name: str, results: dict[str, Any], path: str | os.PathLike[str] = RESULTS_PATH,
           timed_share: float | None = None) -> dict[str, Any]:
    """Append one JSON line ``{benchmark, results, commit, date, machine, contention, versions, argv}`` to
    ``path``.

    ``contention`` holds the whole process's cpu share (``cpu_share``) and, when given, ``timed_share``:
    the share over the timed stretch alone (a ``CpuMeter``). The contention warning judges the timed
    stretch where there is one: a process that first loads or exports models on one thread has a low
    whole-process share though its timings ran on free cores.

    The file is opened in append mode only: earlier lines are never touched.
    Returns the record written.
    """
    contention = cpu_share()
    if timed_share is not None:
        contention["timed_cpu_share"] = timed_share
    entry = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(ignore=path),
        "results": results,
        "machine": machine_info(),
        "contention": contention,
        "versions": versions(),
        "argv": sys.argv[1:],
    }
    line = json.dumps(entry, sort_keys=False, default=_jsonable)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    share = contention["cpu_share"] if timed_share is None else timed_share
    over = "the process" if timed_share is None else "the timed stretch"
    print(f"recorded {name!r} in {Path(path).name} (cpu share {share} over {over}, "
          f"load {entry['machine']['loadavg']})")
    if share is not None and share < CONTENTION_WARNING:
        print(f"WARNING: over {over} this process got only {share:.0%} of its {entry['machine']['torch_threads']} "
              "threads' CPU time: other work shared the machine, the timings are suspect")
    return entry


def _jsonable(value: Any) -> Any:
    try:  # numpy / torch scalars
        return value.item()
    except AttributeError:
        return str(value)


def _cell(value: Any, fmt: str | None) -> str:
    if isinstance(value, float):
        return format(value, fmt or ".3f")
    return str(value)


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], formats: Sequence[str | None] | None = None
) -> str:
    """Print (and return) a plain aligned table: text left-aligned, numbers right-aligned.

    ``formats`` gives a format spec per column for float cells (default ".3f").
    """
    rows = [list(r) for r in rows]
    formats = list(formats) if formats is not None else [None] * len(headers)
    cells = [[_cell(v, formats[i]) for i, v in enumerate(r)] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) and bool(rows) for i in range(len(headers))]

    def fmt_row(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [fmt_row(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in cells]
    text = "\n".join(lines)
    print(text)
    return text
