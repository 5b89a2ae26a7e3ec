"""ltp_core.teaching.plots draws what it is given: checked on the Agg backend through the artists, not images."""
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ltp_core import Trail  # noqa: E402
from ltp_core.teaching import plots

LAYERS = ("0", "2", "4")


def make_trail(n=6, band=True, start_epoch=0):
    """A Trail like the notebooks': sparsity rising from 0, accuracies falling slowly, thresholds rising."""
    trail = Trail()
    for i in range(n):
        s = 0.9 * i / (n - 1)
        extra = {"band_fraction": 0.2 / (1 + i)} if band else {}
        trail.record(step=10 * i, epoch=start_epoch + i, sparsity=s,
                     layer_sparsity={n_: min(1.0, s * (1 + 0.1 * j)) for j, n_ in enumerate(LAYERS)},
                     soft_accuracy=0.95 - 0.01 * i, hard_accuracy=0.94 - 0.01 * i, flops=1000 - 100 * i,
                     thresholds={n_: 0.01 * i * (j + 1) for j, n_ in enumerate(LAYERS)},
                     top1=0.95 - 0.01 * i, hard_top1=0.94 - 0.01 * i, **extra)
    return trail


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def lines_with_data(ax):
    # the lines a plot drew from data (axhline/axvline have 2 points in axes coordinates; skip them)
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2 or line.get_label() == "total"]


def legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_importing_ltp_core_loads_no_plotting_library():
    code = "import sys, ltp_core; assert not {'matplotlib', 'seaborn'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_style_sets_the_suite_theme_and_takes_overrides():
    plots.style({"figure.figsize": (8, 3)})
    assert plt.rcParams["figure.dpi"] == 72 and tuple(plt.rcParams["figure.figsize"]) == (8, 3)
    plots.style()
    assert tuple(plt.rcParams["figure.figsize"]) == (10, 3.2)


def test_records_accepts_trail_list_and_dataframe():
    trail = make_trail(3)
    assert plots.records(trail) == trail.records
    assert plots.records(trail.records) == trail.records
    frame = pd.DataFrame([{"epoch": r["epoch"], "sparsity": r["sparsity"]} for r in trail])
    assert [r["sparsity"] for r in plots.records(frame)] == [r["sparsity"] for r in trail]


def test_trail_curves_draws_the_records_and_the_target():
    trail = make_trail()
    ax = plots.trail_curves(trail, "sparsity", target=0.8)
    assert isinstance(ax, Axes)
    (line,) = lines_with_data(ax)
    assert list(line.get_xdata()) == [r["epoch"] for r in trail]
    assert list(line.get_ydata()) == [r["sparsity"] for r in trail]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "sparsity"
    assert legend_texts(ax) == ["target"]
    assert any(list(l.get_ydata()) == [0.8, 0.8] for l in ax.get_lines())      # the dotted target line


def test_trail_curves_several_keys_and_runs_name_their_lines():
    ax = plots.trail_curves(make_trail(), ["soft_accuracy", "hard_accuracy"], labels={"hard_accuracy": "hard!"},
                            dense=0.95, dense_tolerance=0.01)
    assert legend_texts(ax) == ["soft", "hard!", "dense"]
    assert len(ax.patches) == 1                                                  # the dense ± tolerance band
    ax = plots.trail_curves({"a": make_trail(), "b": make_trail(3)}, "sparsity", color={"a": "red"})
    assert legend_texts(ax) == ["a", "b"] and ax.get_lines()[0].get_color() == "red"
    assert [len(l.get_xdata()) for l in ax.get_lines()] == [6, 3]
    ax = plots.trail_curves({"only": make_trail()}, "sparsity")               # a mapping's run is named
    assert legend_texts(ax) == ["only"]
    ax = plots.trail_tradeoff({"ours: mobilenet_v2": make_trail()}, x="compression")
    assert legend_texts(ax) == ["ours: mobilenet_v2"]


def test_trail_curves_before_shifts_the_run_and_skips_missing_keys():
    dense = make_trail(4, band=False)                                            # epochs 0..3, no band_fraction
    ax = plots.trail_curves(make_trail(), "sparsity", before=dense)
    (line,) = lines_with_data(ax)
    assert list(line.get_xdata()) == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8]
    assert any(t.get_text().strip() == "LTP →" for t in ax.texts)
    ax = plots.trail_curves(make_trail(), "band_fraction", before=dense)
    (line,) = lines_with_data(ax)
    assert list(line.get_xdata()) == [3, 4, 5, 6, 7, 8]                       # the dense phase has no band


def test_trail_tradeoff_sparsity_and_compression():
    trail = make_trail()
    ax = plots.trail_tradeoff(trail, ["soft_accuracy", "hard_accuracy"], dense=0.95, requirement=0.9)
    soft, hard = lines_with_data(ax)
    assert list(hard.get_xdata()) == [r["sparsity"] for r in trail]
    assert list(hard.get_ydata()) == [r["hard_accuracy"] for r in trail]
    assert ax.get_xlabel() == "sparsity" and ax.get_xscale() == "linear"
    assert set(legend_texts(ax)) == {"soft", "hard", "dense", "requirement"}

    ax = plots.trail_tradeoff(trail, "hard_top1", x="compression", color_by_epoch=True, dense=0.95)
    assert ax.get_xscale() == "log" and ax.xaxis.get_major_formatter()(10, 0) == "10x"
    assert ax.get_xlabel() == "compression" and ax.get_ylabel() == "hard top-1"
    assert legend_texts(ax) == [f"{e:g}" for e in range(6)] + ["dense"]          # one entry per epoch + the star
    assert ax.get_legend().get_title().get_text() == "epoch"


def test_trail_tradeoff_skips_records_without_compression():
    trail = make_trail(3)
    trail.records[-1]["compression"] = None                                      # sparsity 1 has no ratio
    ax = plots.trail_tradeoff(trail, x="compression")
    (line,) = [l for l in ax.get_lines() if len(l.get_xdata()) >= 2]
    assert len(line.get_xdata()) == 2


def test_trail_overview_panels():
    axes = plots.trail_overview(make_trail(), target=0.9, dense=0.95, dense_tolerance=0.01)
    assert len(axes) == 3 and all(isinstance(a, Axes) for a in axes)
    assert axes[0].get_ylim() == (0, 1) and axes[2].get_xlabel() == "sparsity"
    assert axes[1].get_ylim() == axes[2].get_ylim()
    assert axes[1].get_ylim()[0] <= 0.95 - 0.01 - 0.02 + 1e-12                  # the tolerance band is in view
    axes = plots.trail_overview(make_trail(), panels=("sparsity", "accuracy", "band"), before=make_trail(3, band=False),
                                accuracy=("top1", "hard_top1"), chance=0.1, target=0.6, target_label="min_sparsity")
    assert legend_texts(axes[0]) == ["min_sparsity"] and legend_texts(axes[1]) == ["soft top-1", "hard top-1"]
    assert axes[1].get_ylim()[0] < 0.1                                          # chance is in view
    assert all(any(t.get_text().strip() == "LTP →" for t in ax.texts) for ax in axes)
    with pytest.raises(ValueError, match="unknown panel"):
        plots.trail_overview(make_trail(), panels=("nope",))


def test_layer_trajectories_lines_and_heatmap():
    trail = make_trail()
    ax = plots.layer_trajectories(trail, "thresholds", labels={"0": "first"})
    assert legend_texts(ax) == ["first", "2", "4"] and ax.get_ylabel() == "threshold τ"
    assert list(ax.get_lines()[1].get_ydata()) == [r["thresholds"]["2"] for r in trail]
    ax = plots.layer_trajectories(trail, total=True, legend=False)
    assert legend_texts(ax) == ["total"] and len(ax.get_lines()) == 4
    ax = plots.layer_trajectories(trail, kind="heatmap")
    mesh = ax.collections[0]
    assert np.asarray(mesh.get_array()).size == len(LAYERS) * len(trail)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(LAYERS)
    assert mesh.get_clim() == (0, 1)


def test_layer_bars_single_grouped_and_side_by_side():
    values = {"conv1": 0.1, "layer1": 0.5, "layer2": 0.8, "fc": 0.2}
    ax = plots.layer_bars(values, groups={"conv1": "stem", "layer1": "s1", "layer2": "s1", "fc": "head"},
                          sizes={"conv1": 432, "layer1": 2304, "layer2": 9216, "fc": 640}, total=0.6)
    bars = [b for c in ax.containers for b in c]
    assert sorted(b.get_height() for b in bars) == sorted(values.values())
    assert [t.get_text() for t in ax.texts] == ["0.4k", "2.3k", "9.2k", "0.6k"]
    assert legend_texts(ax) == ["stem", "s1", "head", "total"]
    ax = plots.layer_bars({"LTP": {"a": 0.9, "b": 0.8}, "magnitude": {"a": 0.7, "b": 0.95}}, labels={"a": "A"})
    assert sum(len(c) for c in ax.containers) == 4 and legend_texts(ax) == ["LTP", "magnitude"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "b"]
    with pytest.raises(ValueError, match="groups"):
        plots.layer_bars({"s": {"a": 1.0}, "t": {"a": 1.0}}, groups={"a": "g"})


def test_weight_histogram_cut_band_split_and_overlay():
    w = torch.linspace(-1, 1, 1001)
    ax = plots.weight_histogram(w, bins=20, cut=0.5, band=(0.25, 0.01), logy=True)
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "w"
    assert sorted(l.get_xdata()[0] for l in ax.get_lines()) == [-0.5, 0.5]      # the cut at ±|w|
    assert len(ax.patches) == 1 + 2                                              # the histogram + the band twice
    ax = plots.weight_histogram(w, bins=20, band=(0.25, 0.01, 2.0))
    assert ax.patches[1].get_x() == pytest.approx(plots.band_edges(0.25, 0.01, 2.0)[0])
    ax = plots.weight_histogram(w, bins=20, cut=0.5, split=True, cut_label="cut")
    assert legend_texts(ax) == ["kept", "pruned", "cut"]
    kept, pruned = ax.patches[:2]
    assert kept.get_facecolor() != pruned.get_facecolor()
    ax = plots.weight_histogram({"dense": np.abs(w.numpy()) + 1e-3, "after": np.abs(w.numpy()) / 2 + 1e-3},
                                bins=10, cut=0.3, logx=True, colors={"dense": "grey"}, xlabel="|w|")
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 1                 # |w| >= 0: one cut line
    assert legend_texts(ax) == ["dense", "after"]
    with pytest.raises(ValueError, match="split"):
        plots.weight_histogram(w, split=True)


def test_shade_band_matches_band_edges():
    fig, ax = plt.subplots()
    lo, hi = plots.band_edges(0.04, 0.004)
    assert (lo, hi) == pytest.approx((0.04 ** 0.5 * 0.6 ** 0.5, 0.04 ** 0.5 * 1.4 ** 0.5))
    plots.shade_band(ax, 0.04, 0.004)
    spans = sorted(p.get_x() for p in ax.patches)
    assert spans == pytest.approx([-hi, lo])


def test_image_row_grey_and_normalized_colour():
    fig = plots.image_row([np.eye(8) * 16, None], ["a", "b"], cmap="gray_r", vmin=0, vmax=16, suptitle="digits")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"] and len(fig.axes[1].images) == 0
    assert fig._suptitle.get_text() == "digits"
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    x = (torch.full((3, 4, 4), 0.25) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    fig = plots.image_row([x], ["cat"], mean=mean, std=std)
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (4, 4, 3) and np.allclose(shown, 0.25)


def test_method_comparison_two_panels_with_targets():
    table = pd.DataFrame([
        {"method": "dense", "family": "reference", "accuracy": 0.97, "sparsity": 0.0, "FLOPs": 1.0},
        {"method": "ltp", "family": "unstructured", "accuracy": 0.95, "sparsity": 0.9, "FLOPs": 0.2},
        {"method": "gmp", "family": "unstructured", "accuracy": 0.94, "sparsity": 0.9, "FLOPs": 0.25},
        {"method": "gdp", "family": "structured", "accuracy": 0.93, "sparsity": 0.5, "FLOPs": 0.5},
    ]).set_index("method")
    axes = plots.method_comparison(table, dense_accuracy=0.97, budget_accuracy=0.975, target_sparsity=0.9,
                                   sparsity_tolerance=0.01, flops_budget=0.5, flops_tolerance=0.0)
    assert len(axes) == 2
    points = axes[0].collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(points))) == [(0.5, 0.93), (0.9, 0.94), (0.9, 0.95)]   # no reference row
    assert axes[0].get_legend() is None and axes[1].get_legend() is not None
    assert len(axes[0].patches) == 1                                              # the sparsity target band
    assert any(list(l.get_xdata()) == [0.5, 0.5] for l in axes[1].get_lines())   # a zero tolerance: a line
