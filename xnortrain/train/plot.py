"""Training curves: loss and top-1 (train and test) against epoch, for one or several runs.

    python -m xnortrain plot runs/a runs/b --out curves.png

Reads each run directory's `metrics.jsonl`; needs matplotlib (`pip install 'xnortrain[plot]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give run directories written by the trainer")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not one JSON object per line (line {err.lineno})") from None


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Draw loss and top-1 curves of the runs on one figure (two panels) and save it to `out`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'xnortrain[plot]' (or pip install matplotlib)") from None
    labels = labels or [Path(d).name for d in run_dirs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run_dir, label, color in zip(run_dirs, labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        metrics = read_metrics(run_dir)
        epochs = [m["epoch"] for m in metrics]
        evaluated = [m for m in metrics if "val_acc1" in m]  # epochs with an evaluation
        eval_epochs = [m["epoch"] for m in evaluated]
        loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "--", color=color, label=f"{label} train")
        loss_ax.plot(eval_epochs, [m["val_loss"] for m in evaluated], "-", color=color, label=f"{label} test")
        acc_ax.plot(epochs, [100 * m["train_acc1"] for m in metrics], "--", color=color, label=f"{label} train")
        acc_ax.plot(eval_epochs, [100 * m["val_acc1"] for m in evaluated], "-", color=color, label=f"{label} test")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 %", title="top-1 accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
