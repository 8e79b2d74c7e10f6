"""Reuse never trusts a file on the index's word: damaged shards are recomputed and counted, readers
read what the manifest lists and nothing else."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from media import make_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from faults import flip_byte, truncate_at_member_boundary  # noqa: E402 - the bench's fault injectors, one copy

import spectral.reuse
from spectral.data import CachedShardDataModule
from spectral.decode import DecodeConfig, run_decode
from spectral.embed import EmbedConfig, run_embed
from spectral.features.table import run_sensors
from spectral.reuse import STAMPS, Verifier, file_record, output_files

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
CFG = DecodeConfig(num_frames=2, size=32, workers=1, splits=SPLITS, shard_events=3, max_shard_events=6)
EMBED = EmbedConfig(batch_frames=3, num_workers=0)


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(directory)}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive") / "events"
    for day in range(1, 11):
        make_event(root, f"event_2026-11-{day:02d}", n_frames=6)
    return root


@pytest.fixture(scope="module")
def clean(archive, tmp_path_factory):
    """A clean run's decoded and embedded folders: what every repaired run must equal, byte for byte."""
    out = tmp_path_factory.mktemp("clean")
    run_decode(archive, out / "decoded", CFG)
    run_embed(out / "decoded", out / "embedded", EMBED)
    return out


def largest_shard(directory):
    return max((p for p in directory.glob("*.tar")), key=lambda p: (p.stat().st_size, p.name))


def test_the_verifier_reads_a_file_again_only_when_its_stat_changed(tmp_path, monkeypatch):
    path = tmp_path / "a.tar"
    path.write_bytes(b"x" * 100)
    verifier = Verifier.open(tmp_path)
    record = verifier.written("a.tar")
    assert record == file_record(path) and verifier.problem("a.tar", record) is None
    verifier.save({"a.tar"})
    stamped = Verifier.open(tmp_path)
    assert stamped.stamps == verifier.stamps and (tmp_path / STAMPS).is_file()
    reads = []
    monkeypatch.setattr(spectral.reuse, "file_record", lambda p: reads.append(p) or file_record(p))
    assert stamped.problem("a.tar", record) is None and reads == []  # untouched: one stat, no read
    flip_byte(path)  # the stamp's ctime differs: the content is read and found to differ
    assert "content differs" in stamped.problem("a.tar", record)
    path.write_bytes(b"x" * 99)
    assert "99 bytes, the index says 100" in stamped.problem("a.tar", record)
    assert "no size or sha256" in stamped.problem("a.tar", {})
    path.unlink()
    assert "missing" in stamped.problem("a.tar", record)


@pytest.mark.parametrize("damage", [truncate_at_member_boundary, flip_byte])
def test_a_damaged_decode_shard_is_rewritten_and_counted(archive, clean, tmp_path, damage):
    out = tmp_path / "decoded"
    shutil.copytree(clean / "decoded", out)
    assert run_decode(archive, out, CFG)["reuse"]["events_decoded"] == 0  # the copy verified and stamped here
    shard = largest_shard(out)
    damage(shard)
    report = run_decode(archive, out, CFG)
    assert list(report["reuse"]["recomputed"]) == [shard.name]
    assert report["reuse"]["events_decoded"] >= 1
    assert digests(out) == digests(clean / "decoded")
    again = run_decode(archive, out, CFG)  # verified and stamped: nothing more to do
    assert again["reuse"]["recomputed"] == {} and again["reuse"]["events_decoded"] == 0


@pytest.mark.parametrize("damage", [truncate_at_member_boundary, flip_byte])
def test_a_damaged_embedding_shard_is_recomputed_and_counted(clean, tmp_path, damage):
    out = tmp_path / "embedded"
    shutil.copytree(clean / "embedded", out)
    assert run_embed(clean / "decoded", out, EMBED)["throughput"]["reuse"]["shards_written"] == 0  # stamped here
    shard = largest_shard(out)
    damage(shard)
    result = run_embed(clean / "decoded", out, EMBED)
    reuse = result["throughput"]["reuse"]
    assert list(reuse["recomputed"]) == [shard.name] and reuse["shards_written"] == 1
    assert digests(out) == digests(clean / "embedded")


def test_a_damaged_sensor_table_is_recomputed_and_counted(archive, tmp_path, caplog):
    table, clean_table = tmp_path / "sensors.parquet", tmp_path / "clean" / "sensors.parquet"
    run_sensors(archive, clean_table, SPLITS)
    shutil.copy(clean_table, table)
    shutil.copy(clean_table.with_name("sensors_report.json"), tmp_path / "sensors_report.json")
    assert run_sensors(archive, table, SPLITS)["recomputed"] == {}
    flip_byte(table)
    report = run_sensors(archive, table, SPLITS)
    assert report["reused"] == 0 and "content differs" in report["recomputed"]["sensors.parquet"]
    assert "recomputing every event's features: the last run's sensors.parquet: content differs" in caplog.text
    assert table.read_bytes() == clean_table.read_bytes()


def test_embed_refuses_a_damaged_decoded_shard_and_decode_repairs_it(archive, clean, tmp_path):
    decoded, embedded = tmp_path / "decoded", tmp_path / "embedded"
    shutil.copytree(clean / "decoded", decoded)
    truncate_at_member_boundary(largest_shard(decoded))
    with pytest.raises(ValueError, match="rerun the decode stage"):
        run_embed(decoded, embedded, EMBED)
    run_decode(archive, decoded, CFG)
    run_embed(decoded, embedded, EMBED)
    assert digests(embedded) == digests(clean / "embedded")


def test_readers_use_the_shards_the_manifest_lists_and_only_a_complete_one(archive, clean, tmp_path):
    table = tmp_path / "sensors.parquet"
    run_sensors(archive, table, SPLITS)
    embedded = tmp_path / "embedded"
    shutil.copytree(clean / "embedded", embedded)
    data = CachedShardDataModule(embedded, table)
    data.setup()
    events = sum(len(data.used_events(split)) for split in ("train", "val", "test"))
    assert events == 10
    # a stray shard-named file in the folder is not read
    shutil.copy(largest_shard(embedded), embedded / "train-ffffffffffffffff.tar")
    data = CachedShardDataModule(embedded, table)
    data.setup()
    assert sum(len(data.used_events(split)) for split in ("train", "val", "test")) == 10
    # a listed shard that is not there (a node-local folder never copied back) stops the reader
    (embedded / "train-ffffffffffffffff.tar").unlink()
    listed = largest_shard(embedded)
    listed.unlink()
    with pytest.raises(ValueError, match=f"{listed.name}: the manifest lists it at .* found missing"):
        CachedShardDataModule(embedded, table).setup()
    # and an interrupted embed run's manifest is refused
    shutil.copy(clean / "embedded" / listed.name, listed)
    manifest = json.loads((embedded / "manifest.json").read_text())
    (embedded / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="interrupted embed run"):
        CachedShardDataModule(embedded, table).setup()


def test_events_lost_between_stages_stop_training_naming_them(archive, clean, tmp_path):
    """Each stage checks its own losses; an event decode accepted and sensors rejected (or the other way) is
    lost between them, and more than train.max_left_out_fraction of those fails the reader."""
    events = tmp_path / "events"
    shutil.copytree(archive, events)
    (events / "event_2026-11-04" / "sensors.csv").write_text("no,usable\ncolumns,here\n")
    table = tmp_path / "sensors.parquet"
    run_sensors(events, table, SPLITS)  # 1 of 10 rejected: within its own limit
    with pytest.raises(ValueError, match=r"1 of the 10 events .* event_2026-11-04: no row in"):
        CachedShardDataModule(clean / "embedded", table).setup()
    data = CachedShardDataModule(clean / "embedded", table, max_left_out_fraction=0.1)
    data.setup()
    assert [row["event"] for row in data.left_out()] == ["event_2026-11-04"]


def test_verify_reads_every_listed_shard_and_names_the_damaged_ones(clean, tmp_path):
    decoded, embedded = tmp_path / "decoded", tmp_path / "embedded"
    shutil.copytree(clean / "decoded", decoded)
    shutil.copytree(clean / "embedded", embedded)
    command = [sys.executable, "-m", "spectral", "verify", str(decoded), str(embedded)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{embedded}: {len(list(embedded.glob('*.tar')))} of {len(list(embedded.glob('*.tar')))}" in ok.stdout
    damaged = largest_shard(embedded)
    flip_byte(damaged)
    failed = subprocess.run(command, capture_output=True, text=True)
    assert failed.returncode == 2
    assert f"{damaged.name}: content differs from the index's sha256" in failed.stdout
    assert "1 shard(s) damaged" in failed.stderr
    (embedded / "manifest.json").write_text('{"stage": "embed", "complete": false, "index": {}}')
    refused = subprocess.run(command, capture_output=True, text=True)  # no silent "0 of 0 match"
    assert refused.returncode == 2 and "interrupted embed run" in refused.stderr
