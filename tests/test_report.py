"""What a run shows on screen and on disk: the progress bar only on a terminal (issue 14, point 11), and plots
whose axis labels stay inside the picture (point 15).
    python -m pytest -q tests/test_report.py
"""
import io

import pytest

import cli


class Terminal(io.StringIO):
    """stderr as a terminal would be: tqdm draws only where isatty() is true (cli.progress asks)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, show, drawn", [(True, True, True), (False, True, False), (True, False, False)])
def test_progress_bar_only_on_a_terminal(monkeypatch, tty, show, drawn):
    pytest.importorskip("tqdm")
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    items = list(cli.progress(range(7), total=7, unit="step", show=show))
    assert items == list(range(7))  # the items pass through unchanged either way
    assert ("7/7" in err.getvalue()) == drawn  # tqdm's counter, with ETA, on the terminal only
    if drawn:
        assert "step/s" in err.getvalue() or "s/step" in err.getvalue()


def test_plot_keeps_its_labels_inside(monkeypatch, tmp_path):
    """The y-label of a low-data plot (long tick labels, a long label) was clipped at the left edge."""
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    boxes = []  # each label's box and the canvas size, read as the figure is saved (before it is closed)

    def savefig(fig, *args, **kwargs):
        real_savefig(fig, *args, **kwargs)
        renderer, size = fig.canvas.get_renderer(), fig.canvas.get_width_height()
        ax = fig.axes[0]
        boxes.extend((t.get_text(), t.get_window_extent(renderer), size)
                     for t in (ax.yaxis.label, ax.xaxis.label, ax.title))

    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", savefig)
    series = {"prefix": ([50, 100, 200, 500], [-1234567.5, 2345678.25, 3456789.125, 4567890.5]),
              "fine": ([50, 100, 200, 500], [0.1, 0.2, 0.3, 0.4])}
    assert cli.line_plot(tmp_path / "lowdata.png", series, "training examples", "BLEU (official, 0-1)", "low data")
    assert (tmp_path / "lowdata.png").stat().st_size > 0 and len(boxes) == 3
    for text, box, (width, height) in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text
    assert matplotlib.get_backend().lower() == "agg"  # headless: plots work on a machine with no display


def test_scoring_shows_its_progress(monkeypatch):
    """Scoring's bar: METEOR, the slowest metric, counts the MRs on a terminal (its jar is stood in for here: the
    bar, not METEOR, is under test; tests/test_eval.py checks the scores)."""
    pytest.importorskip("tqdm")
    from eval.java import Meteor

    meteor = Meteor.__new__(Meteor)  # no JVM
    asked = []
    monkeypatch.setattr(meteor, "_ask", lambda line, answers=1: asked.append(line) or "0.5")
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert meteor.score([["a b", "a c"]] * 9, ["a b"] * 9) == 0.5
    assert len(asked) == 10 and "9/9" in err.getvalue() and "MR METEOR" in err.getvalue()
