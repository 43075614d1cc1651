import numpy as np
import graphnet as gn
from graphnet.testing import check_gradients

def test_smoke(backend):
    rng = np.random.default_rng(0)
    check_gradients(lambda a, b: gn.tanh(a @ b), [rng.normal(size=(3, 4)), rng.normal(size=(4, 2))])
    check_gradients(lambda a, b: a * b + a / (b * b + 1), [rng.normal(size=(3, 4)), rng.normal(size=(4,))])
    check_gradients(lambda z, y: gn.softmax_cross_entropy(z, y), [rng.normal(size=(5, 3))], nondiff={1: np.array([0, 2, 1, 1, 0])})
