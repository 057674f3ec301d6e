"""Artifacts: manifest hashes, corruption, truncation, missing files, versions, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from promptkit.artifacts import FORMAT_VERSION, read_manifest, write_artifact
from promptkit.errors import ArtifactError


def make(path, payload=b"weights" * 100):
    with write_artifact(path, kind="thing", config={"a": 1}) as tmp:
        (tmp / "data.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "table.jsonl").write_text('{"x": 1}\n')
    return path


def test_manifest_lists_every_file_with_hash(tmp_path):
    root = make(tmp_path / "art")
    manifest = read_manifest(root, kind="thing")
    assert manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["files"]) == {"data.bin", "sub/table.jsonl"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())


def test_corrupted_file_named(tmp_path):
    root = make(tmp_path / "art")
    data = bytearray((root / "data.bin").read_bytes())
    data[3] ^= 0xFF
    (root / "data.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="data.bin does not match its sha256"):
        read_manifest(root)


def test_truncated_file_named(tmp_path):
    root = make(tmp_path / "art")
    with open(root / "data.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(ArtifactError, match="data.bin is truncated"):
        read_manifest(root)


def test_missing_file_named(tmp_path):
    root = make(tmp_path / "art")
    (root / "sub" / "table.jsonl").unlink()
    with pytest.raises(ArtifactError, match="table.jsonl is missing"):
        read_manifest(root)


def test_newer_format_refused(tmp_path):
    root = make(tmp_path / "art")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="Upgrade promptkit"):
        read_manifest(root)


def test_garbage_manifest(tmp_path):
    root = make(tmp_path / "art")
    (root / "manifest.json").write_bytes(b"\xff\x00garbage")
    with pytest.raises(ArtifactError, match="corrupted"):
        read_manifest(root)


def test_failed_write_keeps_previous(tmp_path):
    root = make(tmp_path / "art", b"old")
    with pytest.raises(RuntimeError), write_artifact(root, kind="thing") as tmp:
        (tmp / "data.bin").write_bytes(b"new")
        raise RuntimeError("crash in the middle")
    assert (root / "data.bin").read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_sigkill_during_write_keeps_previous(tmp_path):
    root = make(tmp_path / "art", b"old")
    script = textwrap.dedent(f"""
        import time
        from promptkit.artifacts import write_artifact
        with write_artifact({str(root)!r}, kind="thing") as tmp:
            (tmp / "data.bin").write_bytes(b"new" * 1000)
            print("writing", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert read_manifest(root)["kind"] == "thing"
    assert (root / "data.bin").read_bytes() == b"old"
    make(root, b"newer")  # the next write still works despite the stale temporary folder
    assert (root / "data.bin").read_bytes() == b"newer"


def test_interrupted_swap_is_recovered(tmp_path):
    root = make(tmp_path / "art", b"old")
    os.replace(root, tmp_path / ".art.old-deadbeef")  # crash between the two renames
    time.sleep(0.01)
    assert read_manifest(root)["kind"] == "thing"
    assert (root / "data.bin").read_bytes() == b"old"


def test_newer_settings_load_with_a_warning(tmp_path, tiny_bert, sentiment_task, toy_data):
    import json
    import warnings

    import promptkit as pk

    adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, epochs=1)
    adapter.fit(toy_data[:8])
    adapter.save(tmp_path / "a")
    manifest_path = tmp_path / "a" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["setting_from_the_future"] = 3
    manifest["config"]["task"]["another_new_one"] = True
    manifest_path.write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = pk.load_adapter(tmp_path / "a")
    said = " ".join(str(w.message) for w in caught)
    assert "setting_from_the_future" in said and "another_new_one" in said
    assert [p.label for p in loaded.predict(toy_data[:4])] == [
        p.label for p in adapter.predict(toy_data[:4])]
