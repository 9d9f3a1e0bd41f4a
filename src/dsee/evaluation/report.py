"""Compare runs: a table and plots of dev score against FLOPs and against sparsity (``dsee report``).

Reads ``metrics.json`` of each run (training or pruning runs alike). FLOPs are those of one
forward pass at the run's maximum length, relative to the run with the most FLOPs among those
given (the unpruned model, when it is one of them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_file, atomic_write_text


def load_rows(runs: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no metrics.json (not a finished dsee run)")
        m = json.loads(path.read_text())
        pruning = m.get("pruning") or {}
        settings = pruning.get("settings") or {}
        flops = (m.get("flops") or {}).get("total")
        params = m.get("parameters") or {}
        rows.append({
            "run": str(run),
            "task": m.get("task"),
            "method": m.get("method"),
            "metric": m.get("main_metric"),
            "score": 100 * m["score"] if m.get("score") is not None else None,
            "flops": flops,
            "sparsity": pruning.get("sparsity", 1 - params["block_linear_nonzero"] / params["block_linear"]
                                    if params.get("block_linear") else 0.0),
            "heads": settings.get("heads") or 0.0,
            "ffn": settings.get("ffn") or 0.0,
            "kind": _kind(settings),
        })
    top = max((r["flops"] for r in rows if r["flops"]), default=None)
    for r in rows:
        r["flops_share"] = r["flops"] / top if top and r["flops"] else None
    return rows


def _kind(settings: dict[str, Any]) -> str:
    if not settings:
        return "unpruned"
    parts = []
    if settings.get("heads") or settings.get("ffn"):
        parts.append(f"heads {settings.get('heads') or 0:.0%} + FFN {settings.get('ffn') or 0:.0%} "
                     f"({settings.get('head_score')})")
    if settings.get("sparsity"):
        parts.append(f"{settings['sparsity']:.0%} unstructured ({settings.get('score')}, {settings.get('scope')})")
    return "; ".join(parts)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | task | pruning | dev score | FLOPs (vs largest) | sparsity |", "|---|---|---|---|---|---|"]
    for r in rows:
        score = f"{r['score']:.2f} ({r['metric']})" if r["score"] is not None else "–"
        flops = f"{r['flops'] / 1e9:.2f} G ({r['flops_share']:.0%})" if r["flops"] else "–"
        lines.append(f"| {Path(r['run']).name} | {r['task']} | {r['kind']} | {score} | {flops} | {r['sparsity']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for task in sorted({r["task"] for r in rows}, key=str):
        mine = [r for r in rows if r["task"] == task and r["score"] is not None]
        flop_rows = sorted((r for r in mine if r["flops_share"]), key=lambda r: r["flops_share"])
        ax1.plot([100 * r["flops_share"] for r in flop_rows], [r["score"] for r in flop_rows], "o-", label=task)
        sparse_rows = sorted(mine, key=lambda r: r["sparsity"])
        ax2.plot([100 * r["sparsity"] for r in sparse_rows], [r["score"] for r in sparse_rows], "o-", label=task)
    ax1.set_xlabel("inference FLOPs (% of the largest run)")
    ax2.set_xlabel("zeros in the blocks' linear weights (%)")
    for ax in (ax1, ax2):
        ax.set_ylabel("dev score (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("dev score vs FLOPs")
    ax2.set_title("dev score vs sparsity")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(runs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """``out``/report.md and ``out``/report.png (written atomically / replaced)."""
    rows = load_rows(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", markdown(rows))
    with atomic_file(out / "report.png") as tmp:
        plot(rows, tmp)
    return {"table": out / "report.md", "plot": out / "report.png"}
