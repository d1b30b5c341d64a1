"""A picture of what an image model gets wrong: misclassified test images, each titled true -> predicted.

Drawn with matplotlib (Agg backend) into a base64 PNG for the run report.
"""

from __future__ import annotations

import base64
import io

import numpy as np


def misclassified_grid(paths: list[str], truth: np.ndarray, predicted: np.ndarray, labels: list[str],
                       limit: int = 24) -> str | None:
    """PNG (base64) of up to LIMIT misclassified images, each titled 'true -> predicted'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    wrong = [i for i in range(len(paths)) if truth[i] != predicted[i]][:limit]
    if not wrong:
        return None
    cols = min(6, len(wrong))
    rows = (len(wrong) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        with Image.open(paths[i]) as im:
            im.thumbnail((128, 128))
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(f"{labels[truth[i]]} → {labels[predicted[i]]}", fontsize=8, color="#b00")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
