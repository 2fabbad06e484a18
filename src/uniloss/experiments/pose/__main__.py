"""``python -m uniloss.experiments.pose [PATH]``: draw the ``digits-pose`` examples picture
(:func:`~uniloss.experiments.pose.plots.plot_examples`; ``docs/results/pose/examples.png``)."""

import sys

from .plots import plot_examples

if __name__ == "__main__":  # python -m uniloss.experiments.pose docs/results/pose/examples.png
    print(plot_examples(sys.argv[1] if len(sys.argv) > 1 else "digits-pose-examples.png"))
