"""``python -m uniloss.experiments.pose [PATH]``: draw the ``digits-pose`` examples picture
(:func:`~uniloss.experiments.pose.plots.plot_examples`; ``docs/results/pose/examples.png``)."""

import argparse

from .plots import plot_examples

if __name__ == "__main__":  # python -m uniloss.experiments.pose docs/results/pose/examples.png
    parser = argparse.ArgumentParser(prog="python -m uniloss.experiments.pose",
                                     description="Draw examples of the digits-pose task (canvases, joints, discs).")
    parser.add_argument("path", nargs="?", default="digits-pose-examples.png", help="the PNG to write")
    print(plot_examples(parser.parse_args().path))
