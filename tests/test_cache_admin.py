"""`avlab cache list|prune`: every cache's entries are found, a changed, outdated or interrupted
entry is told from a current one and pruned, nothing current is touched, and the last use orders
age- and size-based pruning."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avlab import cli
from avlab.cache_admin import CacheEntry, parse_size, prune, scan, select, summarize
from avlab.datamodules.saliency import SaliencyDataModule
from avlab.datamodules.yt8m import YT8MDataModule
from avlab.demo.saliency import build_saliency_demo
from avlab.demo.yt8m import build_yt8m_demo
from avlab.errors import ConfigError
from avlab.features.cache import FeatureCache, cached, file_fingerprint
from avlab.features.frame_cache import FrameStore, frame_key

DAY = 86400.0


def _statuses(entries: list[CacheEntry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        out[e.status] = out.get(e.status, 0) + 1
    return out


def _age(path: Path, days: float) -> None:
    past = time.time() - days * DAY
    os.utime(path, (past, past))


# --------------------------------------------------------------------------- feature cache
def _features(folder: Path, source: Path) -> dict[str, np.ndarray]:
    return cached(
        FeatureCache(folder / ".features"),
        "toy",
        "1",
        {"p": 1},
        [source],
        lambda: {"x": np.frombuffer(source.read_bytes(), np.uint8).astype(np.float32)},
    )


def test_a_feature_entry_of_a_rewritten_source_is_changed_and_pruned(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first")
    b.write_bytes(b"other")
    _features(tmp_path, Path("a.bin"))  # a relative path is recorded absolute, checkable from anywhere
    _features(tmp_path, b)
    monkeypatch.chdir("/")
    assert _statuses(scan([tmp_path])) == {"current": 2}
    a.write_bytes(b"second!")  # new size
    entries = scan([tmp_path])
    assert _statuses(entries) == {"current": 1, "changed": 1}
    changed = next(e for e in entries if e.status == "changed")
    assert str(a) in changed.reason and changed.files[0].suffix == ".npz"
    assert len(list((tmp_path / ".features").glob("*/*"))) == 4
    removed = prune([tmp_path])
    assert [e.path for e, _ in removed] == [changed.path]
    assert not any(f.exists() for f in changed.files)
    assert _statuses(scan([tmp_path])) == {"current": 1}


def test_same_size_new_content_is_changed_but_a_touch_alone_is_not(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"abcdef")
    _features(tmp_path, src)
    _age(src, 2)  # touched, same bytes: the content key still matches
    assert _statuses(scan([tmp_path])) == {"current": 1}
    src.write_bytes(b"ABCDEF")  # same size, new bytes
    assert _statuses(scan([tmp_path])) == {"changed": 1}


def test_missing_sources_are_pruned_only_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    _features(tmp_path, src)
    src.unlink()
    assert _statuses(scan([tmp_path])) == {"missing": 1}
    assert prune([tmp_path]) == []
    assert len(prune([tmp_path], missing=True)) == 1
    assert scan([tmp_path]) == []


# --------------------------------------------------------------------------- frame store
@pytest.fixture(scope="module")
def saliency_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_saliency_demo(tmp_path_factory.mktemp("cache-admin-saliency"), size="tiny") / "stavis"


def test_saliency_frames_of_a_rewritten_frame_are_changed_and_pruned(
    saliency_demo: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "stavis"
    shutil.copytree(saliency_demo, root, ignore=shutil.ignore_patterns(".features"))
    kw = {"root": str(root), "datasets": ["AVAD"], "clip_len": 8, "frame_size": (32, 56)}
    dm = SaliencyDataModule(**kw)
    dm.setup()
    built = dm.extract_features(progress=False)["videos"]
    entries = scan([tmp_path / "cache"])
    assert _statuses(entries) == {"current": built} and {e.area for e in entries} == {"frames"}
    ds = dm._dataset("val")
    vid, start = ds.items[0]
    frame, old_key = ds.videos[vid].frames[start], ds.frames.key(vid)
    with Image.open(frame) as im:
        w, h = im.size
    Image.fromarray(np.full((h, w, 3), 9, np.uint8)).save(frame, quality=70)
    entries = scan([tmp_path / "cache"])
    assert _statuses(entries) == {"current": built - 1, "changed": 1}
    stale = next(e for e in entries if e.status == "changed")
    assert stale.path.name == old_key  # the entry of the video whose frame changed
    # The DataModule builds the new entry beside the old one; pruning leaves exactly the new set.
    again = SaliencyDataModule(**kw)
    again.setup()
    assert again.extract_features(progress=False)["built"] == 1
    assert [e.path for e, _ in prune([tmp_path / "cache"])] == [stale.path]
    assert _statuses(scan([tmp_path / "cache"])) == {"current": built}
    after = SaliencyDataModule(**kw)
    after.setup()
    assert after.extract_features(progress=False)["built"] == 0  # pruning took nothing still in use


def _frame_entry(root: Path, source: Path, version_override: str | None = None) -> Path:
    """An entry as unqa writes one: keyed by the source's content, fingerprint in ``sources``."""
    store = FrameStore(root)
    fp = file_fingerprint(source)
    key = frame_key("unqa-frames", {"size": 4}, {"size": fp["size"], "sha1": fp["sha1"]})

    def fill(out: dict[str, np.ndarray]) -> None:
        out["frames"][...] = 7

    store.build(key, {"frames": ((2, 4, 4, 3), "uint8")}, fill, {"kind": "unqa-frames", "sources": [fp]})
    if version_override is not None:
        meta = store.path(key) / "meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": version_override}))
    return store.path(key)


def test_content_keyed_frame_entries_and_outdated_layouts(tmp_path: Path) -> None:
    frames = tmp_path / "cache" / "frames"
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for i, p in enumerate((a, b, c)):
        p.write_bytes(bytes([i]) * 10)
    kept = _frame_entry(frames, a)
    rewritten = _frame_entry(frames, b)
    old = _frame_entry(frames, c, version_override="0")
    b.write_bytes(b"new content here")
    by_path = {e.path: e for e in scan([tmp_path / "cache"])}
    assert by_path[kept].status == "current"
    assert by_path[rewritten].status == "changed"
    assert by_path[old].status == "outdated" and "version 0" in by_path[old].reason
    assert {e.path for e, _ in prune([tmp_path / "cache"], dry_run=True)} == {rewritten, old}
    assert rewritten.exists() and old.exists()  # a dry run removes nothing
    prune([tmp_path / "cache"])
    assert kept.exists() and not rewritten.exists() and not old.exists()


def test_interrupted_builds_are_partial_but_a_running_one_is_left_alone(tmp_path: Path) -> None:
    sub = tmp_path / "cache" / "frames" / "ab"
    dead = sub / f".{'ab' * 20}.tmp-{2**22 + 12345}-deadbeef"  # a pid above Linux's pid_max
    live = sub / f".{'ab' * 20}.tmp-{os.getpid()}-cafebabe"
    young = sub / f".{'ac' * 20}.tmp-{2**22 + 12346}-0badf00d"
    for d in (dead, live, young):
        d.mkdir(parents=True)
        (d / "frames.npy").write_bytes(b"x" * 100)
    for d in (dead, live):
        _age(d / "frames.npy", 1)
        _age(d, 1)
    entries = scan([tmp_path / "cache"])
    assert [(e.path, e.status, e.size) for e in entries] == [(dead, "partial", 100)]
    assert "no longer running" in entries[0].reason
    prune([tmp_path / "cache"])
    assert not dead.exists() and live.exists() and young.exists()


# --------------------------------------------------------------------------- yt8m
def test_yt8m_feature_cache_and_counts_of_a_rewritten_shard_are_changed(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AVLAB_CACHE", str(cache))
    root = build_yt8m_demo(tmp_path / "yt8m", size="tiny")
    dm = YT8MDataModule(root=str(root), feature_cache=True, batch_size=8)
    dm.extract_features(progress=False)
    entries = scan([cache])
    areas = summarize(entries)
    assert areas["yt8m-features"]["current"] == areas["yt8m-features"]["entries"] == 3  # train/val/test
    assert areas["tfrecord-counts"]["current"] == areas["tfrecord-counts"]["entries"] > 0
    shard = min((root / "video").glob("train*.tfrecord"))
    shard.write_bytes(shard.read_bytes())  # the same bytes, rewritten: a new mtime, as the key sees it
    _age(shard, 1)
    areas = summarize(scan([cache]))
    assert areas["yt8m-features"]["changed"] == 1 and areas["yt8m-features"]["current"] == 2
    assert areas["tfrecord-counts"]["changed"] == 1
    removed = prune([cache])
    assert sorted(e.area for e, _ in removed) == ["tfrecord-counts", "yt8m-features"]
    assert all(e.status == "current" for e in scan([cache]))


# --------------------------------------------------------------------------- age, size, CLI
def _entry(size: int, last_used: float, status: str = "current") -> CacheEntry:
    return CacheEntry("features", Path(f"/x/{size}"), (), size, last_used, status)


def test_older_than_and_max_size_pick_least_recently_used_first() -> None:
    now = 1_000 * DAY
    entries = [
        _entry(10, now - 40 * DAY),
        _entry(20, now - 2 * DAY),
        _entry(30, now - 5 * DAY),
        _entry(40, now - 1 * DAY, "changed"),
    ]
    picked = select(entries, older_than_days=30, now=now)
    assert [e.size for e, _ in picked] == [10, 40]
    assert "unused for 40 days" in picked[0][1]
    # Without the stale (40) and old (10) entries 50 bytes remain; 25 allowed drops the older (30).
    picked = select(entries, older_than_days=30, max_size=25, now=now)
    assert [e.size for e, _ in picked] == [10, 30, 40]
    assert [e.size for e, _ in select(entries, statuses=(), max_size=100, now=now)] == []
    assert [e.size for e, _ in select(entries, statuses=(), max_size=60, now=now)] == [10, 30]


def test_reading_an_entry_marks_its_last_use_at_most_daily(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    _features(tmp_path, src)
    (meta,) = (tmp_path / ".features").glob("*/*.json")
    _age(meta, 3)
    _features(tmp_path, src)  # a hit
    assert time.time() - meta.stat().st_mtime < 60
    _age(meta, 0.5)
    before = meta.stat().st_mtime
    _features(tmp_path, src)
    assert meta.stat().st_mtime == before  # read within the day: no write


def test_parse_size() -> None:
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("2TiB") == 2 * 1024**4 and parse_size("123") == 123
    with pytest.raises(ConfigError, match="like 500M"):
        parse_size("lots")


def test_cli_lists_and_prunes(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"abc")
    _features(tmp_path, a)
    a.write_bytes(b"abcd")
    b = tmp_path / "b.bin"
    b.write_bytes(b"keep")
    _features(tmp_path, b)
    assert cli.main(["cache", "list", str(tmp_path), "--entries"]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "changed" in out and str(a) in out and "would free" in out
    assert cli.main(["cache", "list", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["status"] for e in listed) == ["changed", "current"]
    assert cli.main(["cache", "prune", str(tmp_path), "--dry-run"]) == 0
    assert "would remove 1 entries" in capsys.readouterr().out
    assert len(scan([tmp_path])) == 2
    assert cli.main(["cache", "prune", str(tmp_path)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert _statuses(scan([tmp_path])) == {"current": 1}
    assert cli.main(["cache", "prune", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["cache", "prune", str(tmp_path), "--max-size", "lots"]) == 2


def test_the_default_cache_folder_is_scanned(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path))
    demo = tmp_path / "demo" / "avq" / "tiny"
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    _features(demo, src)  # a demo dataset's own .features under the cache folder
    assert cli.main(["cache", "list"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert _statuses(scan([tmp_path])) == {"current": 1}


def test_readme_cache_commands_run_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_readme_examples import readme_section

    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    _features(tmp_path / "cache" / "demo" / "avq" / "tiny", src)
    src.write_bytes(b"abcd")
    (block,) = (b for b in readme_section("Caches").split("```")[1::2] if b.startswith("bash"))
    commands = [line.split("#")[0].split() for line in block.splitlines()[1:] if line.strip()]
    assert [c[:3] for c in commands] == [["avlab", "cache", c] for c in ("list", "list", "prune", "prune")]
    outputs = []
    for command in commands:
        assert cli.main(command[1:]) == 0, command
        outputs.append(capsys.readouterr().out)
    assert "changed" in outputs[0] and str(src) in outputs[1]
    assert "would remove 1 entries" in outputs[2] and "removed 1 entries" in outputs[3]
    assert scan([tmp_path / "cache"]) == []
