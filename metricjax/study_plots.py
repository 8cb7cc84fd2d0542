"""The figures of the study pages: validation curves and t-SNE panels.

matplotlib and scikit-learn come with the `experiments` extra (and `dev`);
only the runners in experiments/ import this module, never the library.
"""

import json
import os

import matplotlib
import numpy as np

from metricjax import files
from metricjax import study

matplotlib.use("Agg")  # Files only, no display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def save_figure(fig, path: str, dpi: int = 100) -> None:
  """A figure as PNG, written atomically, then closed."""
  fig.tight_layout()
  with files.atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  plt.close(fig)


def curves(path: str, panels, key: str, ylabel: str, title: str = "",
           band: bool = False) -> None:
  """One panel per (panel title, lines, horizontal lines): every line
  (label, runs, matplotlib style) is the seed-mean validation curve `key`
  against epochs (band: with the min-max over seeds); a horizontal line is
  (y, style), e.g. a target."""
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(5.5 * len(panels), 4.2))
  for ax, (panel_title, lines, hlines) in zip(axes[0], panels):
    for label, runs, style in lines:
      if not runs:
        continue
      epochs, means = zip(*study.mean_curve(runs, key))
      line, = ax.plot(epochs, means, marker=".", label=label, **style)
      if band and len(runs) > 1:
        per_step = runs[0]["epochs"] / runs[0]["total_steps"]
        by_step = [dict(map(tuple, r["curves"][key])) for r in runs]
        values = [[c[round(e / per_step)] for c in by_step] for e in epochs]
        ax.fill_between(epochs, [min(v) for v in values],
                        [max(v) for v in values], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    for y, style in hlines:
      ax.axhline(y, color="grey", linewidth=0.8, **style)
    ax.set(xlabel="epoch", ylabel=ylabel, title=panel_title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  save_figure(fig, path)


def tsne_points(workdir: str, step: int, limit: int):
  """(2-d t-SNE points, labels) of `limit` test embeddings of a run at a
  checkpoint, with cosine distances as retrieval ranks them; fitted once,
  cached in the run directory (t-SNE is slow)."""
  cache = os.path.join(workdir, f"tsne-{step}-{limit}.npz")
  if not os.path.exists(cache):
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
    emb, labels = study.split_embeddings(workdir, step, limit)
    points = TSNE(n_components=2, metric="cosine", init="pca",
                  perplexity=min(30.0, (len(emb) - 1) / 3),
                  random_state=0).fit_transform(np.asarray(emb))
    with files.atomic_write(cache, "wb") as f:
      np.savez(f, points=points, labels=labels)
  with np.load(cache) as panel:
    return panel["points"], panel["labels"]


def tsne_figure(path: str, panels, limit: int, title: str = "") -> None:
  """A grid of t-SNE panels [(row, column, workdir, step, panel title)].

  The one t-SNE cache scheme: points per run directory (tsne_points), and
  beside the figure a stamp (path + ".json": the panels and limit); the
  figure is redrawn only when the stamp changes, so a page rewritten after
  every run fits each panel once and a clone without the run directories
  keeps the committed figure (as it does when a panel's run directory is
  absent: runs known from their records only)."""
  stamp = json.dumps([list(p) for p in panels] + [limit])
  if (os.path.exists(path) and os.path.exists(path + ".json")
      and open(path + ".json").read() == stamp):
    return
  if not all(os.path.isdir(p[2]) for p in panels):
    return  # A run known only from its record: keep the figure there is.
  rows = max(p[0] for p in panels) + 1
  cols = max(p[1] for p in panels) + 1
  fig, axes = plt.subplots(rows, cols, squeeze=False,
                           figsize=(4.2 * cols, 4.2 * rows))
  for ax in axes.flat:
    ax.axis("off")
  for row, col, workdir, step, panel_title in panels:
    points, labels = tsne_points(workdir, step, limit)
    ax = axes[row, col]
    ax.axis("on")
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3,
               linewidths=0)
    ax.set_title(panel_title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=10)
  save_figure(fig, path)
  files.write_text(path + ".json", stamp)
