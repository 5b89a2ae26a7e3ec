"""The figures the notebooks draw, from data a notebook already has.

Inputs are plain: a `Trail`, a list of its record dicts (keys epoch, step, sparsity,
compression, soft_accuracy, hard_accuracy, flops, layer_sparsity and, where recorded,
thresholds, band_fraction; ltp-train's records also soft_top5, hard_top5, soft_loss, hard_loss) or a
DataFrame of them; {layer: value} dicts; tensors or arrays. Every function draws into the
`ax=` (or `axes=`) it is given, or into a new figure, and returns what it drew into, so a
notebook sets titles and limits afterwards with `ax.set(...)`.

    style()                   the suite's theme: seaborn whitegrid, 72 dpi, 10 x 3.2 inch
    trail_curves(...)         trail metrics over epochs, one run or {label: run}
    trail_tradeoff(...)       accuracy (or FLOPs) along the trail against sparsity/compression
    trail_overview(...)       the standard "one LTP run" row of panels built from the two above
    layer_trajectories(...)   per-layer thresholds or sparsity over the run (lines or heatmap)
    layer_bars(...)           one bar per layer, for one or several {layer: value} dicts
    weight_histogram(...)     histogram(s) of weights with the cut, the band, kept/pruned
    image_row(...)            one row of images with titles
    method_comparison(...)    accuracy against sparsity and FLOPs for a table of methods

`ltp_core/__init__.py` does not import this module: the library itself never needs
matplotlib (it is imported here, at the top, only when a notebook asks for plots).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["LABELS", "style", "records", "mark_target", "mark_dense", "mark_phase", "compression_axis",
           "band_edges", "shade_band", "trail_curves", "trail_tradeoff", "trail_overview", "layer_trajectories",
           "layer_bars", "weight_histogram", "image_row", "method_comparison"]

# How a record key is shown on an axis or in a legend (a notebook's `labels=` overrides any of them).
LABELS = {"soft_accuracy": "soft", "hard_accuracy": "hard", "top1": "soft top-1", "hard_top1": "hard top-1",
          "top5": "soft top-5", "soft_top5": "soft top-5", "hard_top5": "hard top-5", "soft_loss": "soft loss",
          "hard_loss": "hard loss", "band_fraction": "band fraction", "flops": "FLOPs",
          "thresholds": "threshold τ", "layer_sparsity": "sparsity"}

Run = Any          # a Trail, a list of record dicts, or a DataFrame with one row per record
Runs = Any         # one Run, or {label: Run}


def style(rc: Mapping[str, Any] | None = None) -> None:
    """The suite's look: seaborn's whitegrid theme, 72 dpi (small notebook files), 10 x 3.2 inch
    figures, 11 pt titles; `rc` updates matplotlib's rcParams on top, e.g. {"figure.figsize": (8, 3)}."""
    sns.set_theme(style="whitegrid")
    plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (10, 3.2), "axes.titlesize": 11, **(rc or {})})


def records(run: Run) -> list[dict[str, Any]]:
    """The record dicts of a Trail, a list of dicts or a DataFrame (one row per record)."""
    if hasattr(run, "records") and not callable(run.records):   # a Trail (DataFrame.records would be a column)
        return list(run.records)
    if hasattr(run, "to_dict") and hasattr(run, "columns"):    # a DataFrame
        return run.to_dict("records")
    return list(run)


def _runs(runs: Runs) -> dict[str | None, list[dict[str, Any]]]:
    # {label: records}; one run gets the label None (its lines are named after the metric)
    if isinstance(runs, Mapping):
        return {str(k): records(v) for k, v in runs.items()}
    return {None: records(runs)}


def _numeric(value: Any) -> bool:
    # a value that can be plotted: trail records hold None (and JSON null) where nothing was measured
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def _xy(recs: Sequence[dict[str, Any]], x: str, y: str, x_offset: float = 0.0) -> tuple[list[float], list[float]]:
    # the (x, y) pairs of the records holding a number under both keys: a key a record lacks (band_fraction
    # in a dense run) or left None (compression at sparsity 1) is skipped, never drawn as 0
    pairs = [(float(r[x]) + x_offset, float(r[y])) for r in recs if _numeric(r.get(x)) and _numeric(r.get(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _new_ax(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots()[1]


def _color(color: str | Mapping[str, str] | None, label: str | None) -> str | None:
    if isinstance(color, Mapping):
        return color.get(label) if label is not None else None
    return color


def _numpy(values: Any) -> np.ndarray:
    # a tensor (on any device) or anything numpy takes, as a float array; torch is not imported here
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()     # bfloat16 has no numpy dtype
    return np.asarray(values, dtype=float)


def _legend(ax: Axes, **kw: Any) -> None:
    # a legend only when something is labelled (matplotlib warns on an empty one)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**{"fontsize": 8, **kw})


def mark_target(ax: Axes, value: float, tolerance: float | None = None, *, label: str | None = "target",
                color: str = "tab:red", axis: str = "y") -> None:
    """A value the run must reach (a target sparsity, a FLOPs budget): a dotted line at `value`, or a
    shaded band value ± tolerance when `tolerance` is non-zero. `axis="x"` marks an x value."""
    line, span = (ax.axhline, ax.axhspan) if axis == "y" else (ax.axvline, ax.axvspan)
    if tolerance:
        span(value - tolerance, value + tolerance, color=color, alpha=0.12, lw=0, label=label)
    else:
        line(value, color=color, ls=":", lw=1, label=label)


def mark_dense(ax: Axes, value: float, tolerance: float | None = None, *, label: str | None = "dense") -> None:
    """The dense network's accuracy: a grey dashed line, and a grey band ± `tolerance` (the accuracy
    drop a pruned network may have) when given."""
    ax.axhline(value, color="grey", ls="--", lw=1, label=label)
    if tolerance:
        ax.axhspan(value - tolerance, value + tolerance, color="grey", alpha=0.12, lw=0)


def mark_phase(ax: Axes, x: float, text: str = " LTP →") -> None:
    """Where a second phase starts (LTP after dense training): a dashed line at `x` and `text` at the
    top of the axes (placed in axes coordinates, so later y limits do not move it)."""
    ax.axvline(x, color="grey", ls="--", lw=1)
    ax.text(x, 1.0, text, va="top", fontsize=8, color="grey",
            transform=mtransforms.blended_transform_factory(ax.transData, ax.transAxes))


def compression_axis(ax: Axes, minor: Sequence[float] = (2, 3, 5)) -> None:
    """A log x axis for compression ratios, ticks written "1x", "10x" (and the `minor` values too,
    since a run's compression often stays below the next power of ten)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}x" if v in minor else ""))


def band_edges(tau: float, temperature: float, width: float = 4.0) -> tuple[float, float]:
    """The transition band |w**2 - tau| < width * T (tau, T in units of w**2) as an interval of |w|."""
    return math.sqrt(max(tau - width * temperature, 0.0)), math.sqrt(tau + width * temperature)


def shade_band(ax: Axes, tau: float, temperature: float, width: float = 4.0, **style: Any) -> None:
    """Shade the transition band on an axis in w: two intervals, around -sqrt(tau) and +sqrt(tau)."""
    lo, hi = band_edges(tau, temperature, width)
    style = {"color": "orange", "alpha": 0.15, "lw": 0} | style
    for a, b in ((lo, hi), (-hi, -lo)):
        ax.axvspan(a, b, **style)


def trail_curves(runs: Runs, y: str | Sequence[str] = "sparsity", *, x: str = "epoch",
                 labels: Mapping[str, str] | None = None, color: str | Mapping[str, str] | None = None,
                 marker: str | None = None, before: Run | None = None, target: float | None = None,
                 tolerance: float | None = None, target_label: str | None = "target", dense: float | None = None,
                 dense_tolerance: float | None = None, ax: Axes | None = None) -> Axes:
    """Record keys `y` (one or several) against `x` (default: epoch) for one run or {label: run}.

    A line per (run, key), named after the run, the key (`labels`/LABELS), or both; records
    without a number under a key are skipped. `color`: one colour, or {line name: colour}.
    `before`: an earlier phase's run (the dense training) drawn first, the run's x shifted to
    start where it ended and the boundary marked (`mark_phase`). `target`/`tolerance`: a required
    value (`mark_target`); `dense`/`dense_tolerance`: the dense accuracy (`mark_dense`)."""
    ax = _new_ax(ax)
    keys = [y] if isinstance(y, str) else list(y)
    names = {**LABELS, **(labels or {})}
    earlier = records(before) if before is not None else []
    offset = float(earlier[-1][x]) if earlier else 0.0
    runs_ = _runs(runs)
    for run, recs in runs_.items():
        for key in keys:
            name = names.get(key, key)
            label = name if run is None else run if len(keys) == 1 else f"{run}: {name}"
            bx, by = _xy(earlier, x, key)
            rx, ry = _xy(recs, x, key, offset)
            ax.plot(bx + rx, by + ry, marker=marker, ms=4, color=_color(color, label),
                    label=label if run is not None or len(keys) > 1 else None)  # {label: run}: always named
    if target is not None:
        mark_target(ax, target, tolerance, label=target_label)
    if dense is not None:
        mark_dense(ax, dense, dense_tolerance)
    if earlier:
        mark_phase(ax, offset)
    ax.set(xlabel=names.get(x, x), ylabel=names.get(keys[0], keys[0]) if len(keys) == 1 else "")
    _legend(ax)
    return ax


def trail_tradeoff(runs: Runs, y: str | Sequence[str] = "hard_accuracy", *, x: str = "sparsity",
                   labels: Mapping[str, str] | None = None, color: str | Mapping[str, str] | None = None,
                   color_by_epoch: bool = False, dense: float | None = None, dense_tolerance: float | None = None,
                   requirement: float | None = None, ax: Axes | None = None) -> Axes:
    """Each trail record as a point (a network one could deploy): `y` (default hard accuracy; several
    keys give several lines) against `x`, "sparsity" or "compression" (a log axis, "2x" ticks).

    Points along a run are joined in record order. `color_by_epoch` (one run): points coloured
    by epoch (viridis, up to ~8 epochs named in the legend) on a thin grey line. `dense`: the dense accuracy, a dashed
    line (± `dense_tolerance` shaded), or on a compression axis a star at 1x, where the dense
    network sits. `requirement`: an accuracy a picked network must reach (dotted grey line)."""
    ax = _new_ax(ax)
    keys = [y] if isinstance(y, str) else list(y)
    names = {**LABELS, **(labels or {})}
    runs_ = _runs(runs)
    if color_by_epoch:
        epochs = [float(r["epoch"]) for recs in runs_.values() for r in recs if _numeric(r.get("epoch"))]
        norm = plt.Normalize(min(epochs, default=0.0), max(epochs, default=1.0))
    for run, recs in runs_.items():
        for key in keys:
            name = names.get(key, key)
            label = name if run is None else run if len(keys) == 1 else f"{run}: {name}"
            xs, ys = _xy(recs, x, key)
            if not color_by_epoch:
                ax.plot(xs, ys, marker="o", ms=3, lw=1, color=_color(color, label),
                        label=label if run is not None or len(keys) > 1 else None)
                continue
            ax.plot(xs, ys, color="grey", lw=0.8, zorder=0)
            kept = [r for r in recs if _numeric(r.get(x)) and _numeric(r.get(key))]
            every = max(1, math.ceil(len(kept) / 8))        # at most ~8 epochs named in the legend
            for i, (r, px, py) in enumerate(zip(kept, xs, ys)):
                ax.scatter([px], [py], s=40, color=plt.cm.viridis(norm(float(r["epoch"]))), zorder=2,
                           label=f"{float(r['epoch']):g}" if i % every == 0 or i == len(kept) - 1 else None)
    if dense is not None and x == "compression":
        ax.scatter([1.0], [dense], marker="*", s=200, color="tab:red", label="dense", zorder=3)
    elif dense is not None:
        mark_dense(ax, dense, dense_tolerance)
    if requirement is not None:
        ax.axhline(requirement, color="grey", ls=":", lw=1, label="requirement")
    if x == "compression":
        compression_axis(ax)
    ax.set(xlabel=names.get(x, x), ylabel=names.get(keys[0], keys[0]) if len(keys) == 1 else "accuracy")
    _legend(ax, **({"title": "epoch", "title_fontsize": 8} if color_by_epoch else {}))
    return ax


def _accuracy_limits(values: Sequence[float], *marks: float | None) -> tuple[float, float]:
    # y limits for accuracies: 0.02 below the lowest value or mark, up to 1 (1.02 when a value touches 1)
    low = min([*values, *(m for m in marks if m is not None)], default=0.0)
    high = max(values, default=0.0)
    return max(0.0, low - 0.02), 1.02 if high >= 0.995 else 1.0


def trail_overview(trail: Run, *, panels: Sequence[str] = ("sparsity", "accuracy", "tradeoff"),
                   accuracy: Sequence[str] = ("soft_accuracy", "hard_accuracy"),
                   labels: Mapping[str, str] | None = None, target: float | None = None,
                   tolerance: float | None = None, target_label: str | None = "target",
                   dense: float | None = None, dense_tolerance: float | None = None, chance: float | None = None,
                   before: Run | None = None, marker: str | None = None,
                   axes: Sequence[Axes] | None = None) -> list[Axes]:
    """One LTP run in a row of panels, each a name from:

        "sparsity"  total sparsity over epochs (black), `target` ± `tolerance` marked
        "accuracy"  the `accuracy` keys over epochs, the dense accuracy ± `dense_tolerance`, `chance`
        "band"      the fraction of weights in the transition band |w²-τ| < 4T over epochs
        "tradeoff"  the `accuracy` keys against sparsity (`trail_tradeoff`)

    `before`: the dense run LTP started from, drawn ahead of it on the epoch panels. Accuracy
    panels share y limits from the data. Returns the axes (titles are defaults to override)."""
    if axes is None:
        n = len(panels)
        fig, axes = plt.subplots(1, n, figsize=(4.0 * n if n > 2 else 5.5 * n, 3.2), squeeze=False)
        axes = list(axes[0])
    recs = records(trail)
    values = [float(r[k]) for r in [*(records(before) if before is not None else []), *recs]
              for k in accuracy if _numeric(r.get(k))]
    limits = _accuracy_limits(values, chance, None if dense is None else dense - (dense_tolerance or 0.0))
    for ax, panel in zip(axes, panels):
        if panel == "sparsity":
            trail_curves(recs, "sparsity", color="k", marker=marker, before=before, target=target,
                         tolerance=tolerance, target_label=target_label, ax=ax)
            ax.set(title="sparsity over training", ylim=(0, 1))
        elif panel == "accuracy":
            trail_curves(recs, accuracy, labels=labels, marker=marker, before=before, dense=dense,
                         dense_tolerance=dense_tolerance, ax=ax)
            if chance is not None:
                ax.axhline(chance, color="grey", ls=":", lw=1)
            ax.set(title="soft and hard accuracy", ylabel="accuracy", ylim=limits)
        elif panel == "band":
            trail_curves(recs, "band_fraction", color="tab:purple", marker=marker, before=before, ax=ax)
            ax.set(title="fraction of weights in the band |w²-τ| < 4T", ylim=(0, None))
        elif panel == "tradeoff":
            trail_tradeoff(recs, accuracy, labels=labels, dense=dense, dense_tolerance=dense_tolerance, ax=ax)
            ax.set(title="the trail: accuracy against sparsity", ylim=limits)
        else:
            raise ValueError(f"unknown panel {panel!r}; panels are sparsity, accuracy, band, tradeoff")
    axes[0].figure.tight_layout()
    return axes


def layer_trajectories(trail: Run, key: str = "layer_sparsity", *, labels: Mapping[str, str] | None = None,
                       total: bool = False, kind: str = "line", legend: bool = True,
                       ax: Axes | None = None) -> Axes:
    """Every layer's value over the run, from the records' {layer: value} dict under `key`
    ("layer_sparsity", or "thresholds": τ_l in units of w²).

    kind="line": a line per layer (`labels` renames layers; `legend=False` leaves them out of the
    legend), `total=True` adds the total sparsity as a black dashed line. kind="heatmap": layers
    as rows, records as columns (sparsity on a fixed 0-1 colour scale)."""
    ax = _new_ax(ax)
    recs = [r for r in records(trail) if isinstance(r.get(key), Mapping) and r[key]]
    layers = list(recs[0][key]) if recs else []
    names = {**LABELS, **(labels or {})}
    epochs = [float(r["epoch"]) for r in recs]
    table = np.array([[r[key].get(n, np.nan) if _numeric(r[key].get(n)) else np.nan for r in recs]
                      for n in layers], dtype=float).reshape(len(layers), len(recs))
    if kind == "heatmap":
        scale = {"vmin": 0, "vmax": 1} if key == "layer_sparsity" else {}
        sns.heatmap(table, ax=ax, cmap="viridis", cbar_kws={"label": names.get(key, key)},
                    xticklabels=[f"{e:g}" for e in epochs], yticklabels=[names.get(n, n) for n in layers], **scale)
        ax.set(xlabel="epoch")
        return ax
    if kind != "line":
        raise ValueError(f"kind must be 'line' or 'heatmap', got {kind!r}")
    for n, row in zip(layers, table):
        ax.plot(epochs, row, label=names.get(n, n) if legend else None)
    if total:
        ax.plot(*_xy(records(trail), "epoch", "sparsity"), "k--", lw=1, label="total")
    ax.set(xlabel="epoch", ylabel=names.get(key, key))
    _legend(ax, **({"title": "layer"} if legend else {}))
    return ax


def layer_bars(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], *,
               labels: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None,
               sizes: Mapping[str, int] | None = None, total: float | None = None, ylabel: str = "sparsity",
               ax: Axes | None = None) -> Axes:
    """One bar per layer: `values` is {layer: value}, or {series: {layer: value}} for side-by-side
    bars per series (e.g. per method), in the first series' layer order.

    `labels`: {layer: tick label}. `groups`: {layer: group} colours one series' bars by group (a
    network's stages). `sizes`: {layer: weights} printed above each bar (as "4.6k"). `total`: the
    whole network's value, a black dashed line."""
    ax = _new_ax(ax)
    series = {None: values} if all(_numeric(v) for v in values.values()) else dict(values)
    layers = list(next(iter(series.values()), {}))
    names = {**(labels or {})}
    xs = [names.get(n, n) for _ in series for n in layers]
    ys = [float(s[n]) for s in series.values() for n in layers]
    if groups is not None:
        if len(series) > 1:
            raise ValueError("groups= colours one series; give {layer: value}")
        sns.barplot(x=xs, y=ys, hue=[groups[n] for n in layers], dodge=False, ax=ax)
    elif len(series) > 1:
        sns.barplot(x=xs, y=ys, hue=[str(s) for s in series for _ in layers], ax=ax)
    else:
        sns.barplot(x=xs, y=ys, ax=ax)
    if sizes is not None:
        for i, n in enumerate(layers):
            ax.text(i, ys[i] + 0.01, f"{sizes[n] / 1000:.1f}k", ha="center", fontsize=6, rotation=90)
    if total is not None:
        ax.axhline(total, color="k", ls="--", lw=1, label="total")
    ax.set(xlabel="layer", ylabel=ylabel)
    _legend(ax)
    return ax


def weight_histogram(weights: Any, *, bins: int | Sequence[float] = 81, range: tuple[float, float] | None = None,
                     cut: float | None = None, cut_label: str | None = None, band: tuple[float, ...] | None = None,
                     split: bool = False, logx: bool = False, logy: bool = False,
                     colors: Mapping[str, str] | None = None, xlabel: str = "w", ax: Axes | None = None) -> Axes:
    """Histogram of weights (a tensor or array, any shape), or of several overlaid with shared
    bins ({label: weights}).

    `bins`: a count (linear bins over `range`, default the data's; log-spaced over the positive
    values with `logx`) or the bin edges. `cut`: the magnitude cut |w| = cut as black dashed lines
    (at ±cut where the range holds negative values); `split=True` draws the weights above the cut
    ("kept") and at or below it ("pruned") as two histograms. `band`: (tau, T) or (tau, T, width)
    shades the transition band |w²-τ| < width·T, width 4 by default (`shade_band`). `logy`: counts
    on a log scale."""
    ax = _new_ax(ax)
    series = {str(k): _numpy(v).ravel() for k, v in weights.items()} if isinstance(weights, Mapping) else \
        {None: _numpy(weights).ravel()}
    if split:
        if cut is None or len(series) != 1:
            raise ValueError("split=True needs one set of weights and a cut")
        w = next(iter(series.values()))
        series = {"kept": w[np.abs(w) > cut], "pruned": w[np.abs(w) <= cut]}
    pooled = np.concatenate([v for v in series.values()] or [np.zeros(0)])
    if isinstance(bins, int):
        if logx:
            positive = pooled[pooled > 0]
            lo, hi = range or (positive.min(), positive.max())
            edges = np.geomspace(lo, hi, bins + 1)
        else:
            lo, hi = range or (pooled.min(), pooled.max())
            edges = np.linspace(lo, hi, bins + 1)
    else:
        edges = np.asarray(bins, dtype=float)
    alpha = 0.6 if len(series) == 1 else 0.45
    for i, (label, values) in enumerate(series.items()):
        c = (colors or {}).get(label, f"C{i}")
        # the fill translucent so overlaid histograms show through, the outline solid
        ax.hist(values, bins=edges, histtype="stepfilled", facecolor=to_rgba(c, alpha),
                edgecolor=c, lw=1, label=label)
    if band is not None:
        shade_band(ax, *band, alpha=0.5, zorder=3)              # over the bars: the band is the point
    if cut is not None:
        for i, x in enumerate((cut, -cut) if edges[0] < 0 else (cut,)):
            ax.axvline(x, color="k", ls="--", lw=1, label=cut_label if i == 0 else None)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="weights")
    _legend(ax)
    return ax


def image_row(images: Sequence[Any], titles: Sequence[str], *, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, cmap: str | None = None, vmin: float | None = None,
              vmax: float | None = None, suptitle: str = "", axes: Sequence[Axes] | None = None) -> Figure:
    """One row of images, one per title: (H, W) arrays (grey, drawn with `cmap`, `vmin`, `vmax`) or
    (C, H, W) tensors as a model sees them, un-normalized with the per-channel `mean`/`std`
    (x * std + mean, clipped to [0, 1]). An image given as None leaves its panel empty."""
    if axes is None:
        fig, axes = plt.subplots(1, len(titles), figsize=(10, 1.4), squeeze=False)
        axes = list(axes[0])
    for ax, image, title in zip(axes, images, titles):
        if image is not None:
            a = _numpy(image)
            if a.ndim == 3:
                if mean is not None and std is not None:
                    a = a * np.asarray(std, dtype=float)[:, None, None] + np.asarray(mean, dtype=float)[:, None, None]
                a = np.clip(a, 0, 1).transpose(1, 2, 0)
                a = a[..., 0] if a.shape[-1] == 1 else a
            ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set(xticks=[], yticks=[], title=title)
    fig = axes[0].figure
    if suptitle:
        fig.suptitle(suptitle, y=1.08, fontsize=11)
    return fig


def method_comparison(table: Any, *, dense_accuracy: float, budget_accuracy: float | None = None,
                      target_sparsity: float | None = None, sparsity_tolerance: float = 0.0,
                      flops_budget: float | None = None, flops_tolerance: float = 0.0,
                      palette: Mapping[str, Any] | None = None, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """Two panels, accuracy against sparsity and against FLOPs (fraction of dense), one point per
    pruning method.

    `table`: a DataFrame with columns (or index) method, family ("unstructured", "structured";
    rows of family "reference" are left out), accuracy, sparsity, FLOPs. The dense accuracy
    (dashed) and the dense network retrained for the same budget (`budget_accuracy`, dotted) are
    lines; the target sparsity and FLOPs budget (± tolerance) are green bands."""
    points = table.reset_index() if "method" not in table.columns else table
    methods = points[points["family"] != "reference"]
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, x, title in ((axes[0], "sparsity", "accuracy against sparsity"),
                         (axes[1], "FLOPs", "accuracy against FLOPs (fraction of dense)")):
        sns.scatterplot(methods, x=x, y="accuracy", hue="method", style="family", palette=palette, s=70, ax=ax,
                        legend=ax is axes[1])
        mark_dense(ax, dense_accuracy)
        if budget_accuracy is not None:
            ax.axhline(budget_accuracy, color="k", ls=":", lw=1, label="dense, same total epochs")
        ax.set(title=title, xlim=(0, 1.02))
    if target_sparsity is not None:
        mark_target(axes[0], target_sparsity, sparsity_tolerance, label=None, color="tab:green", axis="x")
    if flops_budget is not None:
        mark_target(axes[1], flops_budget, flops_tolerance, label=None, color="tab:green", axis="x")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    axes[0].figure.tight_layout()
    return list(axes)
