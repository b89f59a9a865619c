"""``pie crawl``: photos from Flickr users into per-user folders and manifests.

Modules, one job each: :mod:`.budget` (the shared API token bucket),
:mod:`.api` (the ``flickrapi`` client with retries), :mod:`.listing` (photo
entries of API replies into validated candidates), :mod:`.users` (user lists,
published crawl lists, discovery), :mod:`.download` (concurrent fetches),
:mod:`.imagecheck` (decoding, hashing and temporary files), :mod:`.fetchpool`
(downloads and their checks in worker processes), :mod:`.dedupe` (exact and
perceptual duplicates), :mod:`.splits` (train / valid / valid_ref),
:mod:`.stage` (wiring them for ``pie crawl``) and :mod:`.crawler` (the
stage's listing, commit and records).
"""
