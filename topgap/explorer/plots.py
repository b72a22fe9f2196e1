"""The explorer's figures, as matplotlib Figures (no pyplot state, as matplotlib advises for servers): one image's
figures against k (Bias tab) and its ROAD curves (faithfulness). matplotlib is imported on first use (0.6 s)."""
from __future__ import annotations

from .explain import Result
from .sizeprior import SizeAdvice, k_curves

__all__ = ["k_figure", "road_figure"]


def _figure(height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, height), dpi=100)
    return fig, fig.subplots()


def k_figure(result: Result, k=None, advice: SizeAdvice | None = None):
    """IOU, l1 and mass on the object against k/(h*w) (baseline dashed), the selected k as a grey line, and with
    `advice` the object's area as a dotted line and the trained k nearest to it as a triangle."""
    h, w = result.cam_size
    curves = k_curves(result)
    frac = curves["fraction"]
    fig, ax = _figure(3.4)
    for key, colour in (("l1", "tab:blue"), ("iou", "tab:green"), ("mass", "tab:red")):
        if all(y is not None for y in curves[key]):
            ax.plot(frac, curves[key], "o-", color=colour, label=f"Top-GAP {key}")
            if curves["baseline"] and curves["baseline"][key] is not None:
                ax.axhline(curves["baseline"][key], color=colour, ls="--", lw=1, label=f"baseline {key}")
    if k is not None:
        chosen = result.topgap[result.nearest_index(k)]
        ax.axvline(chosen.k / (h * w), color="black", lw=1.5, alpha=0.6, label=f"selected k = {chosen.k}")
    if advice is not None:
        ax.axvline(advice.area / (h * w), color="tab:purple", ls=":", lw=2, label=f"object: {advice.area:.1f} cells")
        ax.plot([advice.k / (h * w)], [1.03], "v", color="tab:purple", ms=10, label=f"nearest trained k = {advice.k}")
    ax.set_xscale("log")
    ax.set_xticks(frac, [f"{m.k}\n{f:.1%}" for m, f in zip(result.topgap, frac)], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("k  (k/(h*w))", fontsize=8)
    ax.set_ylim(0, 1.07)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def road_figure(curves: dict[str, dict], result: Result, k):
    """ROAD score per share of pixels removed for every model (`road_curves`), the selected k drawn bold and the
    baseline dashed."""
    chosen = result.topgap[result.nearest_index(k)].name
    fig, ax = _figure(3.2)
    for name, c in curves.items():
        base = result.baseline is not None and name == result.baseline.name
        ax.plot(c["percentiles"], c["scores"], "s--" if base else "o-", lw=2.5 if name == chosen else 1,
                label=f"{name}{' (' + result.method + ')' if base else ''}: ROAD {c['road']:.3f}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("pixels removed (%)", fontsize=8)
    ax.set_ylabel("(LeRF - MoRF) / 2", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
