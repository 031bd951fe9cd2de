"""The confusion matrix against scikit-learn's, and its plot."""
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from snapfit import confusion_matrix, plot_confusion_matrix


def test_confusion_matrix_matches_sklearn():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 5, 200)
    log_probs = np.log(rng.dirichlet(np.ones(5), 200))
    cm = confusion_matrix(y, log_probs)
    np.testing.assert_array_equal(cm, sk_confusion_matrix(y, log_probs.argmax(1), labels=range(5)))
    np.testing.assert_array_equal(confusion_matrix(y, y, n_classes=7)[:5, :5], np.diag(np.bincount(y, minlength=5)))


def test_plot_confusion_matrix_cells():
    cm = np.array([[5, 1], [0, 7]])
    fig = plot_confusion_matrix(cm, ["cat", "dog"], normalize=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.83", "0.17", "0.00", "1.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
