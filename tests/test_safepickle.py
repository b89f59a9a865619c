"""Untrusted pickles are read without executing anything."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pipeline.safepickle import UnsafePickleError, load_plain_pickle

DATA = Path(__file__).parent / "data"


def test_reads_the_published_validation_list():
    crawl_list = load_plain_pickle((DATA / "valid_from_flickr.pkl").read_bytes())
    assert isinstance(crawl_list, dict) and len(crawl_list) == 100
    assert all(len(urls) == 100 for urls in crawl_list.values())
    assert crawl_list == pickle.loads((DATA / "valid_from_flickr.pkl").read_bytes())


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"1@N01": [_Exploit(marker)]})
    with pytest.raises(UnsafePickleError, match="refused pickle opcode .*GLOBAL"):
        load_plain_pickle(payload, "evil.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_containers_in_every_protocol(protocol):
    value = {"12@N01": ["a", "b"], "n": [1, None, True, False, -5, 2**70]}
    assert load_plain_pickle(pickle.dumps(value, protocol=protocol)) == value


@pytest.mark.parametrize("value", [(1, 2), b"bytes", {1.5: "x"}, {"s": {1, 2}}])
def test_other_types_are_refused(value):
    with pytest.raises(UnsafePickleError):
        load_plain_pickle(pickle.dumps(value), "x.pkl")


def test_truncated_pickle_is_one_clear_error():
    data = pickle.dumps({"a": ["b"] * 10})
    with pytest.raises(UnsafePickleError, match="x.pkl"):
        load_plain_pickle(data[: len(data) // 2], "x.pkl")
