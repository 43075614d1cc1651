"""Every figure of a trained MNIST model, as PNGs (plus a GIF) and one index.html to open.

    python examples/mnist/visualize.py --model runs/fast/model.npz          # into runs/fast/
    python examples/mnist/visualize.py --model runs/seed-10/model.npz --out figs --backend cupy
    python examples/mnist/train.py --plots ...                               # the same, after training

Writes into OUT (default: the model's folder):

    samples.png        25 test images titled with the prediction (mistakes in red)
    weights.png        first-layer weights, one image per hidden unit (or 3x3 filter)
    weight_decay.png   one-layer templates trained without / with weight decay (trains
                       two seed-10 models for a few seconds; --no-weight-decay skips it)
    features_2d.png    last hidden layer of 1000 test images, PCA to 2-D
    features_3d.png    ... and to 3-D; features_3d.gif turns it around (--no-gif skips it)
    curves.png         learning curves from metrics.json (next to the model)
    confusion.png      confusion matrix on the 10000 test images
    mistakes.png       the most confidently wrong test images
    index.html         all of them with the model's metrics

Everything is computed on the active backend (GRAPHNET_BACKEND or --backend);
only what is drawn is copied to the host.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import graphnet as gn
from graphnet import nn, viz
from graphnet.datasets import mnist
from graphnet.errors import ArgumentError
from graphnet.io import CheckpointError, check_path, read_json_file

N_FEATURES = 1000


class Page:
    """The figures written so far, with captions and timings, for index.html."""

    def __init__(self, out: Path, verbose: bool = True) -> None:
        self.out, self.verbose = out, verbose
        self.entries: list[dict[str, Any]] = []

    def add(self, name: str, caption: str, make: Callable[[Path], Any]) -> None:
        """Run ``make(path)`` (which writes ``out/name``) and record it, timed."""
        t0 = time.perf_counter()
        make(self.out / name)
        secs = time.perf_counter() - t0
        self.entries.append({"file": name, "caption": caption, "seconds": secs})
        if self.verbose:
            print(f"  {name:<17} {secs:5.1f} s")

    def note(self, title: str, text: str) -> None:
        """A figure that could not be made, and why."""
        self.entries.append({"file": None, "caption": f"{title}: {text}", "seconds": 0.0})
        if self.verbose:
            print(f"  skipped: {title}: {text}")


def write_all(model_path: str | Path, out_dir: str | Path, data: Optional[str] = None, *,
              n_features: int = N_FEATURES, gif: bool = True, weight_decay: bool = True,
              verbose: bool = True) -> Path:
    """Write every figure for the model at ``model_path`` into ``out_dir``; return index.html.

    ``data``: folder with the MNIST IDX files (default: the cache). Runs on the
    active backend. On the NumPy backend BLAS runs single-threaded meanwhile (when
    threadpoolctl is installed): the work here is small, and on a busy machine
    OpenBLAS's spinning threads made it several times slower.
    """
    with _one_blas_thread():
        return _write_all(Path(model_path), Path(out_dir), data, n_features, gif,
                          weight_decay, verbose)


def _one_blas_thread() -> Any:
    if gn.backend().name != "numpy":
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def _write_all(model_path: Path, out: Path, data: Optional[str], n_features: int, gif: bool,
               weight_decay: bool, verbose: bool) -> Path:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = nn.load(model_path)
    x_train, y_train, x_test, y_test = mnist.load(data)
    metrics = read_metrics(model_path.parent / "metrics.json")
    page = Page(out, verbose)
    if verbose:
        b = gn.backend()
        print(f"figures of {model_path} on {b.name} ({b.device_name()}) -> {out}")
        print(f"  {'model and data':<17} {time.perf_counter() - t_start:5.1f} s")

    t0 = time.perf_counter()
    probs = viz.probabilities(model, x_test)  # one pass over the test set, shared below
    if verbose:
        print(f"  {'test predictions':<17} {time.perf_counter() - t0:5.1f} s")
    page.add("samples.png", "The first 25 test images, titled with the network's prediction; "
             "a wrong prediction is red, framed, and shows the true label.",
             lambda p: viz.save(viz.samples(model, x_test, y_test, probs=probs), p))
    page.add("weights.png", "First-layer weights: each hidden unit's incoming weights (its column "
             "of the first weight matrix) as a 28x28 image, or each convolution filter, on one "
             "colour scale centred on zero (red positive, blue negative). A one-layer network's "
             "ten units are templates of the digits; in deeper networks units pick out local "
             "strokes, and in wide ones many stay close to their random start (noise).",
             lambda p: viz.save(viz.first_layer_weights(model), p))
    if weight_decay:
        if __package__:  # part of the package: python -m examples.mnist.visualize, or imported
            from . import weight_decay as wd
        else:  # run by path (python examples/mnist/visualize.py): this folder is on the path
            import weight_decay as wd
        page.add("weight_decay.png", "Weight decay smooths the weights: two one-layer networks "
                 f"(seed-10 settings, {wd.EPOCHS} epochs, same seed) trained without and with "
                 f"decay lambda = {wd.LAMBDA} per step (theta <- (1 - lambda) theta - eta dJ/dtheta, "
                 "i.e. graphnet weight_decay = lambda / lr). The decayed templates are smoother, "
                 "their background near zero. Each panel has its own colour scale.",
                 lambda p: wd.write(p.parent, (x_train, y_train, x_test, y_test),
                                    save_models=False))
    if model.features is None:
        page.note("Deep features", "this network has no hidden layer")
    else:
        n = min(n_features, len(x_test))
        t0 = time.perf_counter()
        proj, _ = viz.feature_projection(model, x_test[:n], 3)
        if verbose:
            print(f"  {'deep features+PCA':<17} {time.perf_counter() - t0:5.1f} s")
        labels = y_test[:n]
        width = int(proj.mean.shape[0])
        what = f"Last hidden layer ({width} units) of {n} test images"
        page.add("features_2d.png", f"{what}, centred and projected on its first two principal "
                 "axes (PCA by SVD on the backend). One colour per digit: the classes form "
                 "clusters; they overlap in two dimensions, the output layer separates them in "
                 "all of them.",
                 lambda p: viz.save(viz.pca_scatter(proj.points[:, :2], labels,
                                                    proj.explained[:2],
                                                    title=f"{what}, PCA to 2-D"), p))
        page.add("features_3d.png", f"{what} on the first three principal axes.",
                 lambda p: viz.save(viz.pca_scatter(proj.points, labels, proj.explained,
                                                    title=f"{what}, PCA to 3-D"), p))
        if gif:
            page.add("features_3d.gif", "The same 3-D cloud, turning.",
                     lambda p: viz.rotating_gif(proj.points, labels, p, proj.explained,
                                                title="Deep features, PCA to 3-D"))
    history = metrics.get("history") if metrics else None
    if history and (history.get("curve_batches") or history.get("epoch")):
        cfg = metrics.get("config", {})
        per_epoch = math.ceil(len(x_train) / cfg["batch_size"]) if cfg.get("batch_size") else None
        page.add("curves.png", "Learning curves: accuracy and cross-entropy loss on training "
                 "and test images against the number of training batches (curve points on "
                 "subsets; dots: end of each epoch).",
                 lambda p: viz.save(viz.learning_curves(history, per_epoch), p))
    else:
        page.note("Learning curves", f"no training history in {model_path.parent / 'metrics.json'}")
    page.add("confusion.png", "Confusion matrix on the test set: how many images of each true "
             "digit (row) got each prediction (column); colour is the share of the row.",
             lambda p: viz.save(viz.confusion_matrix(model, x_test, y_test, probs=probs), p))
    page.add("mistakes.png", "The test images the network got wrong with the highest confidence: "
             "prediction (its probability) and the true label.",
             lambda p: viz.save(viz.confident_mistakes(model, x_test, y_test, probs=probs),
                                      p))
    total = time.perf_counter() - t_start
    index = write_index(out, model_path, model, metrics, page.entries, total)
    if verbose:
        print(f"  total {total:.1f} s")
    return index


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json as a dict: {} when absent; when unreadable or not an object, {} and a
    warning on stderr saying why (the figures are still drawn, without the metrics)."""
    if not path.exists():
        return {}
    try:
        metrics = read_json_file(path, error=CheckpointError)
    except CheckpointError as exc:
        print(f"warning: {exc}; the page shows no metrics", file=sys.stderr)
        return {}
    if not isinstance(metrics, dict):
        print(f"warning: {path}: expected a JSON object, got {type(metrics).__name__}; the page "
              "shows no metrics", file=sys.stderr)
        return {}
    return metrics


def write_index(out: Path, model_path: Path, model: Any, metrics: dict[str, Any],
                entries: list[dict[str, Any]], total_seconds: float) -> Path:
    """A self-contained HTML page with the metrics and every figure."""
    e = html.escape
    rows = [("model", str(model_path)),
            ("network", _describe(model))]
    for key, label, fmt in (("test_accuracy", "test accuracy", "{:.2%}"),
                            ("train_accuracy", "train accuracy", "{:.2%}"),
                            ("test_loss", "test loss", "{:.4f}"),
                            ("train_images_evaluated", "train accuracy measured on", "{} images"),
                            ("train_loss", "train loss", "{:.4f}"),
                            ("mean_train_loss_last_epoch", "mean training loss, last epoch",
                             "{:.4f}"),
                            ("epochs", "epochs", "{}"),
                            ("total_train_seconds", "training time", "{:.0f} s"),
                            ("backend", "trained on", "{}"),
                            ("device", "device", "{}"),
                            ("finished", "finished", "{}")):
        if key in metrics:
            rows.append((label, fmt.format(metrics[key])))
    if metrics.get("config"):
        cfg = {k: v for k, v in metrics["config"].items() if k not in ("layers",)}
        rows.append(("training config", ", ".join(f"{k}={v}" for k, v in cfg.items())))
    b = gn.backend()
    rows.append(("figures drawn on", f"{b.name} ({b.device_name()}) in {total_seconds:.1f} s"))
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    figs = []
    for ent in entries:
        if ent["file"] is None:
            figs.append(f"<p class=note>{e(ent['caption'])}</p>")
            continue
        figs.append(f"<figure id=\"{e(ent['file'].replace('.', '-'))}\"><img src=\"{e(ent['file'])}\" "
                    f"alt=\"{e(ent['file'])}\"><figcaption><b>{e(ent['file'])}</b> "
                    f"{e(ent['caption'])} <span class=t>({ent['seconds']:.1f} s)</span>"
                    "</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>graphnet: {e(model_path.parent.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; vertical-align: top; }}
th {{ font-weight: 600; white-space: nowrap; }}
figure {{ margin: 0 0 2.5em 0; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ max-width: 60em; margin-top: 0.4em; }}
.t, .note {{ color: #777; }}
</style></head><body>
<h1>graphnet model {e(model_path.parent.name)}</h1>
<table>
{table}
</table>
{chr(10).join(figs)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path


def _describe(model: Any) -> str:
    """e.g. "784 -> Linear(128) -> Tanh -> Linear(10)"."""
    parts = ["x".join(str(d) for d in model.input_shape)]
    for layer in getattr(model.network, "layers", [model.network]):
        cfg = layer.config()
        size = cfg.get("out_features", cfg.get("out_channels"))
        parts.append(f"{type(layer).__name__}({size})" if size else type(layer).__name__)
    return " -> ".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model.npz written by train.py")
    p.add_argument("--out", help="output folder (default: the model's folder)")
    p.add_argument("--data", help="folder with the MNIST IDX files (default: the cache)")
    p.add_argument("--backend", help="numpy or cupy (overrides GRAPHNET_BACKEND)")
    p.add_argument("--features", type=int, default=N_FEATURES,
                   help=f"test images in the deep-feature plots (default {N_FEATURES})")
    p.add_argument("--no-gif", action="store_true", help="skip the turning 3-D GIF")
    p.add_argument("--no-weight-decay", action="store_true",
                   help="skip the weight-decay comparison (which trains two small models)")
    args = p.parse_args(argv)
    try:
        for flag in ("model", "out", "data"):
            if getattr(args, flag) is not None:
                check_path(getattr(args, flag), f"--{flag}")
    except ArgumentError as exc:
        p.error(str(exc))
    if args.features < 1:
        p.error(f"--features must be >= 1, got {args.features}")
    model_path = Path(args.model)
    if model_path.is_dir():
        model_path = model_path / "model.npz"
    if not model_path.exists():
        p.error(f"{model_path} does not exist (train one with examples/mnist/train.py)")
    try:
        if args.backend:
            gn.set_backend(args.backend)
        gn.backend()
    except (gn.BackendUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        index = write_all(model_path, args.out or model_path.parent, args.data,
                          n_features=args.features, gif=not args.no_gif,
                          weight_decay=not args.no_weight_decay)
    except (CheckpointError, mnist.MNISTError, OSError) as exc:  # the model, data or --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
