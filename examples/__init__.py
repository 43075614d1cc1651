"""graphnet's examples, importable as a package (``examples.mnist``, ``examples.nonlinear``)."""
