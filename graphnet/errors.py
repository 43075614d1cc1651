"""Errors graphnet raises, each naming the node, input, argument or file at fault.

Every one is a :class:`GraphnetError` and also the matching builtin (ValueError,
TypeError, ...), so ``except ValueError`` keeps working.
"""


class GraphnetError(Exception):
    """Base of every error graphnet raises on purpose."""


class ArgumentError(GraphnetError, ValueError):
    """An argument of a public function has a value that cannot be right (range, finiteness)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of a public function has the wrong type."""


class GraphError(GraphnetError, ValueError):
    """A graph is built in a way that cannot work (shapes, cost, cycles, membership)."""


class ShapeError(GraphError):
    """Operand shapes that cannot broadcast or multiply, found when a node is built."""


class FeedError(GraphnetError, ValueError):
    """A value fed to ``Graph.run`` is missing, unexpected, or of the wrong rank, size or dtype."""


class NumericsError(GraphnetError, FloatingPointError):
    """A node produced NaN or inf while ``check_numerics`` was on."""


class RunError(GraphnetError, RuntimeError):
    """An op failed while the graph ran; the message names the node and its inputs."""


class OutOfMemoryError(GraphnetError, MemoryError):
    """An array did not fit in host or device memory while a graph ran; the message names
    the node, its inputs and the batch size (``except MemoryError`` still catches it)."""
