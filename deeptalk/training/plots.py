"""A stage's loss curve as a PNG."""
from __future__ import annotations

from pathlib import Path


def plot_losses(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in ("loss", "text_loss", "audio_loss", "distill_loss"):
        if col in df and df[col].notna().any():
            ax.plot(df["step"], df[col], label=col)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
