"""The MNIST example: train (train.py), inspect (visualize.py), predict and serve.

Configuration lives in :mod:`examples.mnist.config`. Each script runs by path
(``python examples/mnist/train.py``) or as a module (``python -m examples.mnist.train``).
"""
