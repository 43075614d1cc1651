"""Layers: objects that hold parameters and add nodes to a graph when called."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, TypeVar, Union

import numpy as np

from .. import ops
from ..backends.host import host_zeros
from ..checks import choice, fits_in_memory, flag, integer, real, sizes
from ..errors import ArgumentTypeError
from ..node import Node, Parameter
from .init import INITS, Init, initial_weights

T = TypeVar("T")
Activation = Literal["tanh", "relu", "sigmoid"]

LAYERS: dict[str, type] = {}


def register(cls: type) -> type:
    """Make a layer class loadable from a saved config by its class name."""
    LAYERS[cls.__name__] = cls
    return cls


class Layer:
    """Base class: ``layer(x)`` returns the output node; parameters are created on first call."""

    def __call__(self, x: Node) -> Node:
        raise NotImplementedError

    def add_parameter(self, name: str, value: np.ndarray, label: str,
                      trainable: bool = True) -> Parameter:
        """Hold ``value`` as the Parameter ``self.<name>`` (named ``label`` in graphs), listed by
        :meth:`named_parameters` in the order added."""
        p = Parameter(value, name=label, trainable=trainable)
        setattr(self, name, p)
        names = self.__dict__.setdefault("_parameter_names", [])
        if name not in names:
            names.append(name)
        return p

    def named_parameters(self) -> dict[str, Parameter]:
        """Every array the layer holds (trainable or not), by name."""
        return {n: getattr(self, n) for n in self.__dict__.get("_parameter_names", ())}

    def parameters(self) -> list[Parameter]:
        """The trainable parameters."""
        return [p for p in self.named_parameters().values() if p.trainable]

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (JSON-serialisable)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def from_config(cfg: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``{"type": name, **config}``."""
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if name not in LAYERS:
        raise ValueError(f"unknown layer type {name!r} in config (known: {', '.join(sorted(LAYERS))})")
    return LAYERS[name](**cfg)


@register
class Linear(Layer):
    """``x @ W + b`` with W of shape (in_features, out_features).

    ``in_features=None`` takes the size from the input's last axis at the first call.
    ``init``: ``"glorot"`` (uniform, for tanh/sigmoid) or ``"he"`` (normal, for ReLU).
    """

    def __init__(self, in_features: Optional[int], out_features: int, bias: bool = True,
                 init: Init = "glorot") -> None:
        self.out_features = integer(out_features, "Linear out_features", 1)
        self.init: Init = choice(init, "Linear init", INITS)  # type: ignore[assignment]
        self.bias = flag(bias, "Linear bias")
        self.in_features = in_features
        self.W: Optional[Parameter] = None
        self.b: Optional[Parameter] = None
        if in_features is not None:
            self._build(integer(in_features, "Linear in_features", 1))

    def _build(self, n_in: int) -> None:
        n_out = self.out_features
        fits_in_memory((n_in, n_out), 8, f"Linear({n_in}, {n_out}) weights")
        self.in_features = n_in
        self.add_parameter("W", initial_weights(self.init, (n_in, n_out), n_in, n_out),
                           f"W{n_in}x{n_out}")
        if self.bias:
            self.add_parameter("b", host_zeros((n_out,)), f"b{n_out}")

    def __call__(self, x: Node) -> Node:
        if self.W is None:
            if x.shape is None or x.shape[-1] is None:
                raise ValueError(f"Linear(None, {self.out_features}) cannot infer in_features: "
                                 f"input {x.name!r} has an unknown last axis")
            self._build(int(x.shape[-1]))
        return ops.linear(x, self.W, self.b)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "init": self.init}


class _Function(Layer):
    """A parameter-free layer applying one op."""

    fn: Callable[[Node], Node]

    def __call__(self, x: Node) -> Node:
        return type(self).fn(x)


@register
class Tanh(_Function):
    fn = staticmethod(ops.tanh)


@register
class ReLU(_Function):
    fn = staticmethod(ops.relu)


@register
class Sigmoid(_Function):
    fn = staticmethod(ops.sigmoid)


@register
class Flatten(_Function):
    fn = staticmethod(ops.flatten)


ACTIVATIONS: dict[str, type] = {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid}


@register
class Dropout(Layer):
    """Inverted dropout with rate ``p`` (identity when the graph runs for evaluation)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = real(p, "Dropout p", 0.0, 1.0, high_open=True)

    def __call__(self, x: Node) -> Node:
        return ops.dropout(x, self.p)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}


@register
class Sequential(Layer):
    """Layers applied in order. After a call, ``taps`` holds each layer's output node."""

    def __init__(self, *args: Union[Layer, dict[str, Any], Iterable[Union[Layer, dict[str, Any]]]],
                 layers: Optional[Iterable[Union[Layer, dict[str, Any]]]] = None) -> None:
        """``Sequential(a, b, c)``, ``Sequential([a, b, c])`` or ``Sequential(layers=[...])``;
        a saved layer config (a dict) stands for its layer. A layer given again is the same
        layer (its parameters tied, listed once); its config is ``{"same_as": index}``."""
        if layers is not None:
            if args:
                raise ArgumentTypeError("Sequential takes layers as arguments or as layers=[...], "
                                        "not both")
            args = (layers,)
        if len(args) == 1 and not isinstance(args[0], (Layer, dict, str, bytes)):
            if not isinstance(args[0], Iterable):
                raise ArgumentTypeError(f"Sequential takes layers or a list of layers, got "
                                        f"{type(args[0]).__name__} {args[0]!r:.60}")
            args = tuple(args[0])
        self.layers: list[Layer] = []
        for k, l in enumerate(args):
            layer = (self._same_as(l, k) if isinstance(l, dict) and "same_as" in l
                     else from_config(l) if isinstance(l, dict) else l)
            if not isinstance(layer, Layer):
                raise ArgumentTypeError(f"Sequential layer {k}: expected a Layer (e.g. nn.Linear, "
                                        f"nn.ReLU()) or a list of them, got {type(l).__name__} "
                                        f"{l!r:.60}")
            self.layers.append(layer)
        self.taps: list[Node] = []

    def __call__(self, x: Node) -> Node:
        self.taps = []
        for layer in self.layers:
            x = layer(x)
            self.taps.append(x)
        return x

    def features(self) -> Node:
        """The node that feeds the last parametrised layer (the deep features)."""
        if not self.taps:
            raise RuntimeError("call the Sequential on an input before asking for its features")
        last = max(i for i, l in enumerate(self.layers) if l.named_parameters())
        if last == 0:
            raise ValueError("the network has a single parametrised layer: no hidden features")
        return self.taps[last - 1]

    def _same_as(self, cfg: dict[str, Any], k: int) -> Layer:
        """The earlier layer a saved ``{"same_as": j}`` (a layer used again) stands for."""
        j = cfg["same_as"]
        if set(cfg) != {"same_as"} or not isinstance(j, int) or isinstance(j, bool) \
                or not 0 <= j < k:
            raise ValueError(f"Sequential layer {k}: {{'same_as': j}} must name an earlier "
                             f"layer (an int in [0, {k})) and nothing else, got {cfg!r:.80}")
        return self.layers[j]

    def _first_uses(self) -> dict[int, int]:
        """``{id(layer): index of its first use}``: a layer used again is one layer."""
        first: dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            first.setdefault(id(layer), i)
        return first

    def named_parameters(self) -> dict[str, Parameter]:
        """Every array, named by the index of the layer's first use (a layer used again,
        tying its parameters, is listed once)."""
        out, first = {}, self._first_uses()
        for i, layer in enumerate(self.layers):
            if first[id(layer)] == i:
                for name, p in layer.named_parameters().items():
                    out[f"{i}.{name}"] = p
        return out

    def config(self) -> dict[str, Any]:
        first = self._first_uses()
        return {"layers": [{"type": type(l).__name__, **l.config()} if first[id(l)] == i
                           else {"same_as": first[id(l)]} for i, l in enumerate(self.layers)]}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]


class _Unset:
    """Marks an argument left out (its old MNIST default is deprecated)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()  # typed Any: it stands in for an argument of any type


def deprecated_default(name: str, value: T, instead: str) -> T:
    """``value`` after a DeprecationWarning that ``name`` will need to be given."""
    warnings.warn(f"{name} defaults to {value!r} (the MNIST size) for now; this default is "
                  f"deprecated: {instead}", DeprecationWarning, stacklevel=3)
    return value


def MLP(layers: Sequence[int], in_features: Optional[int] = UNSET, activation: Activation = "tanh",
        dropout: float = 0.0) -> Sequential:
    """A fully connected network: ``layers`` are the sizes after the input (the last is the output).

    Each hidden layer is Linear then the activation (then Dropout when ``dropout`` > 0).
    ``in_features=None`` takes the input size from the input at the first call; leaving it
    out still means 784 (deprecated).
    """
    choice(activation, "MLP activation", ACTIVATIONS)
    sizes_ = sizes(layers, "MLP layers")
    if in_features is UNSET:
        in_features = deprecated_default("MLP in_features", 784,
                                         "give in_features (or None to infer it from the input)")
    n_in = None if in_features is None else integer(in_features, "MLP in_features", 1)
    dropout = real(dropout, "MLP dropout", 0.0, 1.0, high_open=True)
    init: Init = "he" if activation == "relu" else "glorot"
    out: list[Layer] = []
    for i, n in enumerate(sizes_):
        out.append(Linear(n_in, n, init=init))
        if i < len(sizes_) - 1:
            out.append(ACTIVATIONS[activation]())
            if dropout:
                out.append(Dropout(dropout))
        n_in = None if in_features is None else n  # inferred: every layer built at the call, in order
    return Sequential(out)
