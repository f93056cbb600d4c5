"""Classification metrics against a confusion matrix computed by hand."""

import numpy as np
import pytest

from fmi_jax.train import metrics


def test_known_confusion_matrix():
    # true\pred  a  b  c
    cm = np.array(
        [
            [5, 1, 0],  # a: 6 examples
            [2, 3, 1],  # b: 6 examples
            [0, 0, 4],
        ]
    )  # c: 4 examples
    r = metrics.classification_report(cm, loss=0.5, class_names=["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(12 / 16)
    # precision: a 5/7, b 3/4, c 4/5; recall: a 5/6, b 3/6, c 4/4
    p = [5 / 7, 3 / 4, 4 / 5]
    rec = [5 / 6, 1 / 2, 1.0]
    f1 = [2 * a * b / (a + b) for a, b in zip(p, rec)]
    assert r["precision"] == pytest.approx(np.mean(p))
    assert r["recall"] == pytest.approx(np.mean(rec))
    assert r["f1"] == pytest.approx(np.mean(f1))
    assert r["per_class"]["b"] == pytest.approx(
        {"precision": 0.75, "recall": 0.5, "f1": 0.6, "support": 6}
    )
    assert r["loss"] == 0.5 and r["count"] == 16


def test_never_predicted_class_counts_as_zero_precision():
    cm = np.array([[2, 0], [2, 0]])  # class 1 is never predicted
    r = metrics.classification_report(cm)
    assert r["per_class"]["1"]["precision"] == 0.0
    assert r["precision"] == pytest.approx((0.5 + 0.0) / 2)


def test_absent_class_is_left_out_of_macro_averages():
    cm = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])  # class 2 neither occurs nor is predicted
    assert metrics.classification_report(cm)["f1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "cm,msg", [(np.zeros((2, 3)), "square"), (np.zeros((2, 2)), "empty"), (-np.eye(2), "negative")]
)
def test_bad_confusion_matrices(cm, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.classification_report(cm)


def test_markdown_table_rows():
    r = metrics.classification_report(np.array([[1, 1], [0, 2]]), loss=0.25)
    table = metrics.markdown_table({"test": r})
    assert (
        table.splitlines()[0]
        == "| Split | Loss | Accuracy | Macro precision | Macro recall | Macro F1 |"
    )
    assert table.splitlines()[2] == "| test | 0.2500 | 75.00% | 83.33% | 75.00% | 73.33% |"
