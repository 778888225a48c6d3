"""DET curves: miss against false-alarm rate on normal-deviate axes, labelled in percent."""

import os

from lightsv import metrics
from lightsv.errors import LightsvError


def det_plot(systems: dict, path: str | os.PathLike, title: str = "") -> None:
    """Write one DET curve per system, `systems` = {label: (scores, labels)}, EER points marked."""
    from matplotlib.figure import Figure

    eers = {name: metrics.eer(s, y) / 100 for name, (s, y) in systems.items()}
    # the usual DET window, widened for systems near chance so their curve stays in view
    hi = 0.5 if max(eers.values()) < 0.4 else 0.99
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 99) if t <= 100 * hi]
    fig = Figure(figsize=(5, 5))  # no pyplot: no GUI backend, nothing global
    ax = fig.add_subplot()
    ax.plot(*[metrics.probit([1e-3, hi])] * 2, ls=":", lw=0.8, color="gray")
    for name, (scores, labels) in systems.items():
        fpr, fnr, _ = metrics.det_curve(scores, labels)
        (line,) = ax.plot(
            metrics.probit(fpr), metrics.probit(fnr), lw=1.5, label=f"{name} (EER {100 * eers[name]:.2f} %)"
        )
        ax.plot(metrics.probit(eers[name]), metrics.probit(eers[name]), "o", color=line.get_color())
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(metrics.probit([t / 100 for t in ticks]), [f"{t:g}" for t in ticks])
    ax.set_xlim(*metrics.probit([1e-3, hi]))
    ax.set_ylim(*metrics.probit([1e-3, hi]))
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title(title)
    ax.grid(True, lw=0.3)
    ax.legend(loc="best", fontsize="small")
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as err:
        raise LightsvError(f"cannot write {path}: {err.strerror}") from None
