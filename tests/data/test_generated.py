"""Generated datasets are published whole or not at all, and reused only with the same stamp."""

import json

import pytest

from vislab.data.generated import STAMP, building, default_cache_dir, is_complete


def test_building_publishes_the_folder_with_its_stamp(tmp_path):
    root = tmp_path / "cache" / "scenes"
    stamp = {"version": 1, "n": [3, 1, 1]}
    assert not is_complete(root, stamp)
    with building(root, stamp) as tmp:
        assert tmp.is_dir() and tmp != root and not root.exists()
        (tmp / "a.txt").write_text("a")
    assert (root / "a.txt").read_text() == "a"
    assert json.loads((root / STAMP).read_text()) == stamp
    assert is_complete(root, stamp) and not is_complete(root, {**stamp, "version": 2})
    assert [p.name for p in root.parent.iterdir()] == ["scenes"]  # no temporary sibling left


def test_a_failed_build_leaves_the_old_folder_and_no_temporary(tmp_path):
    root = tmp_path / "scenes"
    with building(root, {"v": 1}) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), building(root, {"v": 2}) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in root.iterdir()) == [STAMP, "old.txt"]
    assert is_complete(root, {"v": 1}) and not is_complete(root, {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["scenes"]
    with building(root, {"v": 2}) as tmp:  # a later build replaces the old folder whole
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in root.iterdir()) == [STAMP, "new.txt"]


def test_an_unreadable_stamp_is_not_complete(tmp_path):
    (tmp_path / STAMP).write_text("{not json")
    assert not is_complete(tmp_path, {"v": 1})


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
