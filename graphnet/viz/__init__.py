"""Figures for graphnet models (matplotlib, host-side; imported only on demand).

Each figure function takes host or device arrays, does its arithmetic on the
model's backend, copies to the host only what it draws, and returns a
``matplotlib.figure.Figure`` (no pyplot, no display needed). Save one with
:func:`save` (the PNG is exactly ``figsize * dpi`` pixels).

=========================  ==========================================================
``samples``                a grid of images titled predicted (true); mistakes in red
``first_layer_weights``    each first-layer unit (or 3x3 filter) as an image, one
                           symmetric diverging colour scale
``weight_decay_comparison``  first-layer weights of several models side by side
``deep_features``          PCA (2-D or 3-D) of the last hidden layer, one colour per class
``pca`` / ``pca_scatter``  backend PCA with fixed signs; class-coloured 2-D / 3-D scatter
``rotating_gif``           the 3-D scatter turning (PillowWriter GIF)
``learning_curves``        accuracy and loss against training batches
``confusion_matrix``       counts of (true, predicted), coloured by share of the true class
``confident_mistakes``     gallery of the wrong predictions the model was surest of
``decision_regions``       a classifier's regions in a plane, with its data
``image_grid``             the grid helper all image figures use
=========================  ==========================================================
"""
from .base import host, new_figure, pixel_size, png_size, save, scatter_classes
from .curves import history_dict, learning_curves
from .figures import (confident_mistakes, confusion_counts, confusion_matrix, first_layer,
                      first_layer_images, first_layer_weights, probabilities, samples,
                      weight_decay_comparison)
from .grid import as_images, grid_shape, image_grid
from .pca import Projection, deep_features, feature_projection, pca, pca_scatter, rotating_gif
from .regions import decision_regions

__all__ = ["host", "new_figure", "pixel_size", "png_size", "save", "scatter_classes",
           "history_dict", "learning_curves", "confident_mistakes", "confusion_counts",
           "confusion_matrix", "first_layer", "first_layer_images", "first_layer_weights",
           "probabilities", "samples", "weight_decay_comparison", "as_images", "grid_shape",
           "image_grid", "Projection", "deep_features", "feature_projection", "pca",
           "pca_scatter", "rotating_gif", "decision_regions"]
