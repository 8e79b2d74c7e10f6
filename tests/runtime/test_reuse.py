"""Reuse never trusts a file on the index's word: damaged shards are recomputed and counted, readers
read what the manifest lists and nothing else."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from media import make_event

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from faults import flip_byte, truncate_at_member_boundary  # noqa: E402 - the bench's fault injectors, one copy

import spectral.runtime.reuse
from spectral.data import CachedShardDataModule
from spectral.runtime.reuse import STAMPS, Verifier, file_record, key_changes, output_files
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, run_embed
from spectral.stages.sensors import run_sensors

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
CFG = DecodeConfig(num_frames=2, size=32, audio_seconds=5.0, workers=1, missing_modality="reject", splits=SPLITS,
                   shard_events=3, max_shard_events=6)
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
    monkeypatch.setattr(spectral.runtime.reuse, "file_record", lambda p: reads.append(p) or file_record(p))
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


def upgrade(monkeypatch, distribution: str) -> str:
    """Pretend `distribution` was upgraded to 99.0 (what a pin change records); returns the real version."""
    real = spectral.runtime.reuse.metadata.version
    monkeypatch.setattr(spectral.runtime.reuse.metadata, "version",
                        lambda name: "99.0" if name == distribution else real(name))
    return real(distribution)


def test_a_library_upgrade_recomputes_exactly_the_stage_it_shapes_and_says_why(archive, tmp_path, monkeypatch,
                                                                                  caplog):
    decoded, embedded, table = tmp_path / "decoded", tmp_path / "embedded", tmp_path / "sensors.parquet"
    run_decode(archive, decoded, CFG)
    run_sensors(archive, table, SPLITS)
    run_embed(decoded, embedded, EMBED)
    with monkeypatch.context() as patch:
        soxr = upgrade(patch, "soxr")  # decode resamples audio with it
        decode = run_decode(archive, decoded, CFG)["reuse"]
        sensors = run_sensors(archive, table, SPLITS)
        embed = run_embed(decoded, embedded, EMBED)["throughput"]["reuse"]
    assert decode["events_decoded"] == 10 and decode["key_changes"] == [f"soxr {soxr} → 99.0"]
    assert f"decode: soxr {soxr} → 99.0; recomputing 10 events" in caplog.text
    assert sensors["reused"] == 10 and sensors["key_changes"] == []
    assert embed["shards_written"] == 0  # the same shard bytes: nothing to re-embed
    back = run_decode(archive, decoded, CFG)["reuse"]  # the pin undone is a change too
    assert back["events_decoded"] == 10 and back["key_changes"] == [f"soxr 99.0 → {soxr}"]
    with monkeypatch.context() as patch:
        torch_version = upgrade(patch, "torch")
        embed = run_embed(decoded, embedded, EMBED)["throughput"]["reuse"]
    assert embed["shards_kept"] == 0 and embed["key_changes"] == [f"torch {torch_version} → 99.0"]
    with monkeypatch.context() as patch:
        polars = upgrade(patch, "polars")
        sensors = run_sensors(archive, table, SPLITS)
    assert sensors["reused"] == 0 and sensors["key_changes"] == [f"polars {polars} → 99.0"]


def test_key_changes_name_what_differs_for_a_person():
    parts = {"code": "a" * 64, "config": {"size": 224, "frames": 8}, "libraries": {"av": "18.1.0", "numpy": "2.4.6"}}
    changed = {"code": "b" * 64, "config": {"size": 256, "frames": 8},
               "libraries": {"av": "18.2.0", "pillow": "13.0.0"}}
    assert key_changes(None, parts) == []  # a first or clean run
    assert key_changes({"key_parts": parts}, parts) == []
    assert key_changes({"key_parts": parts}, changed) == [
        "code (what the stage's code does)", "config.size 224 → 256", "av 18.1.0 → 18.2.0", "numpy 2.4.6 → absent",
        "pillow absent → 13.0.0"]
    assert key_changes({"index": {}}, parts) == [
        "the last run's index records no key parts (written by an older version)"]


EMBED_ELSEWHERE = """
import json, sys
from pathlib import Path
from spectral.stages.embed import EmbedConfig, run_embed
config = EmbedConfig(batch_frames=3, num_workers=0, reuse=sys.argv[3])
print(json.dumps(run_embed(Path(sys.argv[1]), Path(sys.argv[2]), config)["throughput"]["reuse"]))
"""


def embed_on_another_kernel(decoded: Path, embedded: Path, reuse: str) -> dict:
    """The embed stage in a process whose torch runs its baseline CPU kernels (what a machine of another kind
    computes with): the reuse counts it reports."""
    result = subprocess.run([sys.executable, "-c", EMBED_ELSEWHERE, str(decoded), str(embedded), reuse],
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_machine_of_another_kind_extends_the_archive_and_same_device_recomputes_what_it_did_not_make(
        archive, clean, tmp_path):
    events, decoded, embedded = tmp_path / "events", tmp_path / "decoded", tmp_path / "embedded"
    shutil.copytree(archive, events)
    shutil.copytree(clean / "decoded", decoded)
    shutil.copytree(clean / "embedded", embedded)
    make_event(events, "event_2026-11-30", n_frames=6)  # sorts last: one shard of its split changes
    decode = run_decode(events, decoded, CFG)["reuse"]
    assert decode["events_decoded"] == 1
    total = sum(len(files) for files in json.loads((decoded / "report.json").read_text())["shards"].values())
    elsewhere = embed_on_another_kernel(decoded, embedded, "recipe")
    assert elsewhere["shards_written"] == decode["shards_written"] == 1 and elsewhere["shards_kept"] == total - 1
    manifest = json.loads((embedded / "manifest.json").read_text())
    kernels = {m["kernels"].rpartition(" ")[2] for m in manifest["made_by"]}
    assert kernels == {"DEFAULT", torch_capability()}, manifest["made_by"]
    strict = embed_on_another_kernel(decoded, embedded, "same_device")
    assert strict["shards_written"] == total - 1 and strict["shards_kept"] == 1


def torch_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()
