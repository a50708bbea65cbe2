"""The run cache trusts nothing it reads: wrong shapes, a directory in an entry's place, a
hand-edited result or an entry under another run's name give a warning naming the file, and
the run is recomputed."""

from __future__ import annotations

import json

import pytest

from refsim.studies.cache import Cache, CacheWarning, checksum, code_hash, run_key
from refsim.studies.executor import run_grid

CONFIGS = [{"i": i} for i in range(3)]


def double(config: dict) -> dict:
    return {"value": 2 * config["i"]}


def _filled(tmp_path) -> tuple[Cache, str]:
    cache = Cache(tmp_path / "cache")
    run_grid(double, CONFIGS, study="t", version=1, cache=cache)
    return cache, run_key("t", 1, CONFIGS[1], code_hash())


def test_entry_holds_key_config_result_and_checksum(tmp_path):
    cache, key = _filled(tmp_path)
    entry = json.loads(cache._path(key).read_text())
    assert entry == {"key": key, "config": {"i": 1}, "result": {"value": 2},
                     "sha256": checksum(key, {"i": 1}, {"value": 2})}
    assert cache.get(key) == {"value": 2}


BAD_ENTRIES = {
    "list": "[1, 2, 3]",
    "result-int": '{"result": 5}',
    "result-empty": '{"result": {}}',
    "not-json": "{not json",
    "result-list": None,  # filled in below: a well-formed entry whose result is a list
}


@pytest.mark.parametrize("text", list(BAD_ENTRIES), ids=list(BAD_ENTRIES))
def test_entry_of_the_wrong_shape_is_recomputed_with_a_warning_naming_it(tmp_path, text):
    cache, key = _filled(tmp_path)
    path = cache._path(key)
    if BAD_ENTRIES[text] is None:
        entry = {"key": key, "config": {"i": 1}, "result": [2],
                 "sha256": checksum(key, {"i": 1}, [2])}
        path.write_text(json.dumps(entry))
    else:
        path.write_text(BAD_ENTRIES[text])
    with pytest.warns(CacheWarning, match=f"{path}.*the run is recomputed"):
        results, stats = run_grid(double, CONFIGS, study="t", version=1, cache=cache)
    assert results == [{"value": 0}, {"value": 2}, {"value": 4}]
    assert (stats["cached"], stats["computed"]) == (2, 1)
    assert cache.get(key) == {"value": 2}  # the entry was rewritten, well-formed


def test_hand_edited_result_fails_its_checksum(tmp_path):
    cache, key = _filled(tmp_path)
    path = cache._path(key)
    entry = json.loads(path.read_text())
    entry["result"]["value"] = 3  # well-formed, plausible, wrong
    path.write_text(json.dumps(entry))
    with pytest.warns(CacheWarning, match="does not match its checksum"):
        assert cache.get(key) is None


def test_entry_copied_under_another_runs_name_is_refused(tmp_path):
    cache, key = _filled(tmp_path)
    other = run_key("t", 1, CONFIGS[2], code_hash())
    cache._path(key).write_text(cache._path(other).read_text())
    with pytest.warns(CacheWarning, match="the entry of another run"):
        assert cache.get(key) is None


def test_directory_in_an_entrys_place_is_recomputed_not_a_crash(tmp_path):
    cache, key = _filled(tmp_path)
    path = cache._path(key)
    path.unlink()
    path.mkdir()
    with pytest.warns(CacheWarning, match=f"{path} is a directory") as caught:
        results, stats = run_grid(double, CONFIGS, study="t", version=1, cache=cache)
    assert results[1] == {"value": 2} and stats["computed"] == 1
    assert any("is not cached" in str(w.message) for w in caught)  # put says so too
    assert path.is_dir()  # left alone: it is not ours to delete


def test_cache_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        Cache(tmp_path / "f")
