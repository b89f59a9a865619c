"""DSN degrading network: makes pseudo original photos from retouched ones.

``dsn`` holds the network (Zhao et al., ICCV 2021) with its configuration,
``train`` its training loop with exact resume, ``infer`` batched and tiled
inference. The package reads no image files; callers pass arrays.
"""
