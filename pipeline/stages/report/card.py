"""``ATTRIBUTION.csv`` and ``DATASET.md``: who made each kept photo under which licence, and a dataset card.

Both are generated from the latest manifest records and the workspace status
only, sorted by user and photo id, with no clock in them, so the same
workspace always gives byte-identical files.
"""

from __future__ import annotations

import csv
import io

ATTRIBUTION_COLUMNS = ("page_url", "owner_name", "license_name", "license_url", "license_id", "title", "nsid",
                       "photo_id")


def kept_photos(photos: dict[str, dict[str, dict]]) -> list[dict]:
    """The latest ``ok`` record of every kept photo, by user and numeric photo id."""
    kept = [record for records in photos.values() for record in records.values() if record.get("status") == "ok"]
    return sorted(kept, key=lambda record: (record["user"], int(record["photo_id"])))


def attribution_csv(photos: dict[str, dict[str, dict]]) -> str:
    """One CSV row per kept photo: its Flickr page, owner, licence name, URL and id, title, NSID and photo id."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ATTRIBUTION_COLUMNS)
    for record in kept_photos(photos):
        license_ = record.get("license") or {}
        writer.writerow([record.get("page_url", ""), record.get("owner_name", ""), license_.get("name", ""),
                         license_.get("url", ""), license_.get("id", ""), record.get("title", ""), record["user"],
                         record["photo_id"]])
    return buffer.getvalue()


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def dataset_card(status: dict) -> str:
    """``DATASET.md``: what the dataset is, how it was made, counts, licences, splits, intended use, limits."""
    crawl, rules, degrade, shards = (status[key] for key in ("crawl", "rules", "degrade", "shards"))
    users = crawl["users_by_state"]
    photos = crawl["photos"]
    lines = [
        "# Flickr pseudo-pair dataset for personalized image enhancement",
        "",
        "## What it is",
        "",
        "Pairs of (pseudo original, retouched photo) grouped by Flickr user, for training and evaluating",
        "personalized image enhancement as in Kosugi & Yamasaki, \"Personalized Image Enhancement Featuring",
        "Masked Style Modeling\", IEEE TCSVT 2023. Each user's photos carry that user's own retouching style;",
        "the pseudo originals approximate the photos before retouching. Rule-based pseudo-users (conventional",
        "enhancement methods and Lightroom-like presets applied to MIT-Adobe FiveK originals) add pairs whose",
        "originals are real.",
        "",
        "## How it was made",
        "",
        f"1. `pie crawl`: up to {crawl['per_user']} openly licensed photos per Flickr user at 640 px, each",
        "   recorded with its page, owner, licence, size and SHA-256; duplicates, tiny images and non-images",
        "   rejected.",
        "2. `pie rules`: FiveK originals prepared once and enhanced by every rule (one pseudo-user per rule).",
        "3. `pie train-degrader`: DSN (Zhao et al., ICCV 2021) trained from the rule outputs back to their",
        "   originals.",
        "4. `pie degrade`: every kept Flickr photo turned into a pseudo original with that degrader.",
        "5. `pie shard`: pairs written as WebDataset tar shards, each user's pairs contiguous.",
        "",
        "## Counts",
        "",
    ]
    lines += _table(("what", "count"), [
        ("Flickr users", crawl["users"]),
        ("users complete", users["complete"]),
        ("users short of the target", users["short"]),
        ("users missing (deleted or not visible)", users["missing"]),
        ("users not finished", users["pending"]),
        ("photos kept", photos["ok"]),
        ("photos failed", photos["failed"]),
        ("photos rejected", photos["rejected"]),
        ("pseudo originals (current degrader)", degrade["degraded"] - degrade["stale"]),
        ("prepared FiveK originals", rules["prepared"]["ok"]),
        ("rule pseudo-users", len(rules["rules"])),
        ("rule outputs", rules["outputs_ok"]),
        ("shard pairs", shards.get("totals", {}).get("samples", 0) if shards["present"] else 0),
    ])
    lines += ["", "## Licences", "",
              "Every kept photo keeps the licence its owner chose; `ATTRIBUTION.csv` lists page, owner, licence",
              "and title of each. Redistribution must follow each photo's licence (attribution, and",
              "non-commercial or no-derivatives terms where they apply).", ""]
    lines += _table(("licence id", "licence", "photos"),
                    [(key, value["name"], value["photos"]) for key, value in crawl["licenses"].items()])
    lines += ["", "## Splits", "",
              "Users, not photos, are split: `train` users train the model; `valid` users evaluate it, with",
              "`valid_ref` photos as their preferred (reference) set.", ""]
    lines += _table(("split", "photos"), sorted(crawl["splits"].items()))
    lines += ["", "## Intended use", "",
              "Research on personalized and reference-based image enhancement and on style modeling. Not for",
              "identifying or profiling the photographers or the people in the photos.",
              "", "## Known limits", "",
              "* Pseudo originals are a learned degradation, not the photographers' real originals; their",
              "  colour and tone errors become part of what a model learns.",
              "* Flickr photos are already compressed JPEGs at 640 px; small details and noise differ from raw",
              "  captures.",
              "* Users who publish openly licensed photos on Flickr are not a representative sample of",
              "  photographers; styles, subjects and regions are skewed.",
              "* Photos can be deleted or relicensed after the crawl; check `ATTRIBUTION.csv` pages before reuse.",
              ""]
    if crawl["short_users"] or crawl["missing_users"]:
        lines += [f"* {len(crawl['short_users'])} users have fewer than {crawl['per_user']} photos and "
                  f"{len(crawl['missing_users'])} could not be crawled.", ""]
    return "\n".join(lines)
