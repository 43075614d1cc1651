"""Errors graphnet raises, each naming the node, input or file at fault."""


class GraphError(ValueError):
    """A graph is built in a way that cannot work (shapes, cost, cycles, membership)."""


class ShapeError(GraphError):
    """Operand shapes that cannot broadcast or multiply, found when a node is built."""


class FeedError(ValueError):
    """A value fed to ``Graph.run`` is missing, unexpected, or of the wrong rank, size or dtype."""


class NumericsError(FloatingPointError):
    """A node produced NaN or inf while ``check_numerics`` was on."""


class RunError(RuntimeError):
    """An op failed while the graph ran; the message names the node and its inputs."""
