"""Masked style modeling (Kosugi & Yamasaki, IEEE TCSVT 2023): networks, training, data.

Modules: ``networks`` (the five networks and their config), ``reference`` (the
reference code's checkpoint layout and local pretrained weights), ``complexity``
(parameter counts and multiply-accumulates), ``data`` and ``augment`` (the
WebDataset loaders over ``pie shard`` output), ``losses``, ``pca`` (the style
space's PCA) and ``train`` (the two-step trainer).
"""
