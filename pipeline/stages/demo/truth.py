"""Ground truth of the demo: the true originals of the crawled photos.

The demo corpus (:mod:`pipeline.stages.demo.corpus`) knows the original of
every retouched photo it serves. After the crawl, :func:`write_ground_truth`
puts the original of every kept photo at
``ROOT/ground-truth/flickr/<nsid>/<photo_id>.png`` (8-bit sRGB PNG, resized to
the width and height of the file the crawl kept, which may be one of Flickr's
smaller sizes), where :func:`pipeline.stages.report.images.ground_truth_psnr`
measures the degrader (Kosugi & Yamasaki, "Personalized Image Enhancement
Featuring Masked Style Modeling", IEEE TCSVT 2023, Sec. III-B): its pseudo
originals should be closer to the true originals than the retouched photos
they were made from.
"""

from __future__ import annotations

from pathlib import Path

from manifests.files import write_atomic
from manifests.jsonl import latest_by
from manifests.workspace import Workspace

from ...imageio import encode_png, read_image
from ..report.images import ground_truth_path, resized


def write_ground_truth(workspace: Workspace, truth: Path) -> int:
    """Write the true original of every kept photo from ``truth/<nsid>/<photo_id>.png``; the count written.

    Photos whose truth already exists, or that ``truth`` lacks, are left alone.
    """
    written = 0
    for nsid in workspace.crawled_users():
        kept = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values()
        for record in (record for record in kept if record["status"] == "ok"):
            source = Path(truth) / nsid / f"{record['photo_id']}.png"
            target = ground_truth_path(workspace, nsid, record["photo_id"])
            if not source.is_file() or target.is_file():
                continue
            photo = read_image(workspace.resolve_relative(record["file"])).as_uint8()
            write_atomic(target, encode_png(resized(read_image(source).as_uint8(), photo.shape)))
            written += 1
    return written
