"""PointList: validation, label look-up and subsets (the in-memory form of every landmark set)."""

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.points import PointList

LABELS = ["Helicotrema", "Modiolus base", "Round Window"]
POSITIONS = [[-130.75, -100.68, -80.07], [-131.43, -103.71, -80.69], [-136.76, -102.58, -83.25]]


def make_points() -> PointList:
    return PointList(np.array(POSITIONS), list(LABELS), name="Cochlea_left", descriptions=["apex", "", "rw"])


def test_normalises_inputs():
    pts = PointList([[1, 2, 3]], ("a",))
    assert pts.positions_ras.dtype == np.float64
    assert pts.positions_ras.shape == (1, 3)
    assert pts.labels == ["a"]
    assert pts.descriptions == [""]
    assert pts.name == ""
    assert len(pts) == 1


def test_positions_are_copied():
    source = np.array(POSITIONS)
    pts = PointList(source, list(LABELS))
    source[0, 0] = 999.0
    assert pts.positions_ras[0, 0] == -130.75


def test_empty_list_is_valid():
    pts = PointList(np.zeros((0, 3)), [])
    assert len(pts) == 0
    assert pts.positions_ras.shape == (0, 3)
    assert PointList([], []).positions_ras.shape == (0, 3)


@pytest.mark.parametrize(
    "positions, labels, descriptions, message",
    [
        ([[1.0, 2.0]], ["a"], None, "(N, 3)"),
        ([[[1.0, 2.0, 3.0]]], ["a"], None, "(N, 3)"),
        ([[1.0, np.nan, 3.0]], ["a"], None, "non-finite"),
        ([[1.0, 2.0, np.inf]], ["a"], None, "non-finite"),
        ([[1.0, 2.0, 3.0]], ["a", "b"], None, "1 positions but 2 labels"),
        ([[1.0, 2.0, 3.0]], "a", None, "list of strings"),
        ([[1.0, 2.0, 3.0]], ["a"], ["x", "y"], "descriptions"),
        ([["x", "y", "z"]], ["a"], None, "not numbers"),
    ],
)
def test_invalid_lists_are_refused(positions, labels, descriptions, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PointList(positions, labels, descriptions=descriptions)


def test_index_of_and_position():
    pts = make_points()
    assert pts.index_of("Round Window") == 2
    np.testing.assert_array_equal(pts.position("Modiolus base"), POSITIONS[1])


def test_position_returns_a_copy():
    pts = make_points()
    p = pts.position("Helicotrema")
    p[:] = 0.0
    assert pts.positions_ras[0, 0] == -130.75


def test_missing_label_lists_the_available_ones():
    with pytest.raises(InvalidInputError) as info:
        make_points().index_of("Apex")
    message = str(info.value)
    assert "'Apex'" in message and "Cochlea_left" in message
    for label in LABELS:
        assert label in message


def test_duplicate_label_is_ambiguous():
    pts = PointList(np.zeros((3, 3)), ["a", "b", "a"])
    with pytest.raises(InvalidInputError, match="2 points are labelled 'a'.*rows 1, 3"):
        pts.index_of("a")
    assert pts.index_of("b") == 1


def test_subset_keeps_the_requested_order_and_descriptions():
    sub = make_points().subset(["Round Window", "Helicotrema"])
    assert sub.labels == ["Round Window", "Helicotrema"]
    assert sub.descriptions == ["rw", "apex"]
    assert sub.name == "Cochlea_left"
    np.testing.assert_array_equal(sub.positions_ras, [POSITIONS[2], POSITIONS[0]])
    assert len(make_points().subset([])) == 0


def test_subset_with_unknown_label_fails():
    with pytest.raises(InvalidInputError, match="Available labels"):
        make_points().subset(["Helicotrema", "Oval Window"])
