"""The teaching notebook's widgets and the pure functions under them: answers stay hidden (and
uncomputed) until asked for, and the delta slider assigns each toy weight the centre a greedy pass
gives by hand."""
import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from pwfn_viz.viz.teaching import greedy_assign, plot_delta_assignment  # noqa: E402
from pwfn_viz.widgets import Answer, DeltaExplorer, reveal  # noqa: E402

MU = [0.26, 0.3, 0.6, -0.13]
SIGMA = [0.02, 0.1, 0.01, 0.04]
CENTRES = [0.0, 0.25, 0.5, -0.125]


def same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)) and len(a) == len(b)


def test_greedy_assign_by_hand():
    # delta = 1: w0 (0.26 +- 0.02) and w1 (0.3 +- 0.1) fit only 0.25; w2 (0.6 +- 0.01) fits nothing;
    # w3 (-0.13 +- 0.04) fits only -0.125
    assert same(greedy_assign(MU, SIGMA, CENTRES, 1.0).tolist(), [0.25, 0.25, math.nan, -0.125])
    # delta = 4: 0 fits w1 and w3, 0.25 fits w0 and w1 (a tie: 0 is listed first and takes w1, w3);
    # then 0.25 takes w0. Greedy by count, not nearest: w3 goes to 0, not to -0.125
    assert same(greedy_assign(MU, SIGMA, CENTRES, 4.0).tolist(), [0.25, 0.0, math.nan, 0.0])
    # a sigma at or below zero is floored at 2^-20: only an exact centre fits
    assert same(greedy_assign([0.5, 0.3], [-1.0, 0.0], [0.5], 1.0).tolist(), [0.5, math.nan])
    with pytest.raises(ValueError, match="differ in size"):
        greedy_assign([0.1, 0.2], [0.1], CENTRES)
    with pytest.raises(ValueError, match="positive"):
        greedy_assign(MU, SIGMA, CENTRES, 0.0)


def test_answer_is_hidden_and_not_computed_until_revealed():
    calls = []

    def solution():
        calls.append(1)
        return "the answer"

    answer = reveal(solution)
    assert isinstance(answer, Answer)
    assert not answer.shown and not answer.computed and calls == [] and answer.result is None
    assert answer.output.layout.display == "none"
    answer.button.click()                    # what the reader does
    assert answer.shown and answer.result == "the answer" and calls == [1]
    assert answer.output.layout.display != "none" and "Hide" in answer.button.description
    answer.button.click()                    # hide again, nothing recomputed
    assert not answer.shown and answer.output.layout.display == "none" and calls == [1]
    answer.reveal()
    assert answer.shown and calls == [1]
    with pytest.raises(TypeError, match="function"):
        reveal("42")


def test_delta_slider_assignment_equals_the_hand_computation():
    explorer = DeltaExplorer(MU, SIGMA, CENTRES, draw=False)
    assert same(explorer.assignment.tolist(), [0.25, 0.25, math.nan, -0.125])
    assert "3 of 4</b> weights fit" in explorer.summary.value
    explorer.delta.value = 4.0               # dragging the slider
    assert same(explorer.assignment.tolist(), [0.25, 0.0, math.nan, 0.0])
    assert "3 of 4</b>" in explorer.summary.value and "centres used: 0, 0.25" in explorer.summary.value
    drawn = DeltaExplorer(MU, SIGMA, CENTRES, delta=2.0)
    assert bytes(drawn.image.value).startswith(b"\x89PNG")


def test_teaching_widgets_leave_a_picture_and_a_line_for_readers_without_a_kernel():
    import base64
    drawn = DeltaExplorer(MU, SIGMA, CENTRES, delta=2.0)
    data = drawn._repr_mimebundle_()
    data = data[0] if isinstance(data, tuple) else data
    assert base64.b64decode(data["image/png"]) == bytes(drawn.image.value)     # the picture the slider shows
    assert data["text/plain"] == "DeltaExplorer: delta = 2 (run the notebook to drag it)"
    assert "application/vnd.jupyter.widget-view+json" in data
    answer = reveal(lambda: 42, label="Show the solution")
    data = answer._repr_mimebundle_()
    data = data[0] if isinstance(data, tuple) else data
    assert data["text/plain"] == "Show the solution: hidden until you run the notebook and click"


def test_delta_plot_draws_each_weight_its_band_and_centre():
    fig = plot_delta_assignment(torch.tensor(MU), torch.tensor(SIGMA), CENTRES, 1.0)
    ax = fig.axes[0]
    assert "3 of 4 weights fit" in ax.get_title() and r"$\delta$" in ax.get_title()
    shared = [line for line in ax.lines if line.get_label() == "shared value"][0]
    assert list(shared.get_xdata()) == [0.25, 0.25, -0.125]     # the weight with no centre has no square
    assert ax.get_xlabel() == r"value $\mu$"
