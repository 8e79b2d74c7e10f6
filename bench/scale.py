"""Cost against archive size: decode, sensors and embed at N events of the spec's real shape, and the
nightly case — 1 % more events — re-run incrementally and pushed to a DVC remote.

Events are the synth generator's 5 s, 640x480, 30 fps clips, `--frames` sampled each (spec: 150).
Per N: decode and sensors wall time (each stage in its own process, as `dvc repro` runs it), peak RSS
summed over every process of the stage's tree, shard bytes per event (and against raw `npy` at the
smallest N), embed time where N <= --embed-max (above it: extrapolated from the largest measured N
and marked so), cached training time per epoch. At --incremental-n: add 1 % time-stamped events,
re-run decode + sensors + embed, and `dvc push` to a local remote (bytes it adds, against the new
events' own bytes); then the same with randomly named events. Baselines in the same run: the full
run's time (ratio), raw npy bytes; decode against FFmpeg itself is bench/decode.py's.
Before the new events, an `unchanged` re-run (no new events, outputs relinked by `dvc add`) measures
what verifying the reused outputs alone costs each night.

    python bench/scale.py                         # 250 / 500 / 1000 / 2000 events, 150 frames (hours on 2 cores)
    python bench/scale.py --sizes 40 80 --frames 16 --incremental-n 80     # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, tree_rss_kb, write_result

from spectral.stages.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}

STAGE = """
import json, sys
from pathlib import Path
if __name__ == "__main__":  # imports per stage: each process pays only its own stage's startup, as under dvc repro
    stage, src, dst, options = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
    if stage == "decode":
        from spectral.stages.decode import DecodeConfig, run_decode
        print(json.dumps(run_decode(src, dst, DecodeConfig(splits={splits!r}, **options))["reuse"]))
    elif stage == "sensors":
        from spectral.stages.sensors import run_sensors
        report = run_sensors(src, dst, {splits!r}, links_outside_events="follow")
        print(json.dumps({{"reused": report["reused"], "recomputed": report["recomputed"]}}))
    else:
        from spectral.stages.embed import EmbedConfig, run_embed
        print(json.dumps(run_embed(src, dst, EmbedConfig(**options))["throughput"]["reuse"]))
"""


def run_stage(stage: str, src: Path, dst: Path, options: dict, script: Path) -> dict:
    """Run one stage in its own process tree; wall seconds, peak summed RSS (MiB) and its reuse counts."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(script), stage, str(src), str(dst), json.dumps(options)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_kb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{stage} failed ({process.returncode})")
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mib": round(peak / 1024, 1),
            **json.loads(out.strip().splitlines()[-1])}


def link_events(pool: Path, names: list[str], dest: Path) -> Path:
    """An events folder holding `names` from the generated pool (symlinks: no copy of the media)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (dest / name).exists():
            (dest / name).symlink_to(pool / name, target_is_directory=True)
    return dest


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def shell(*cmd: str, cwd: Path) -> None:
    if cmd[0] == "dvc":  # the environment's own dvc, also when its bin/ is not on PATH
        cmd = (str(Path(sys.executable).parent / "dvc"), *cmd[1:])
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def dvc_push_bytes(repo: Path, outputs: list[str]) -> int:
    """`dvc add` the outputs and `dvc push` them to the repo's local remote; bytes the remote grew by."""
    before = dir_bytes(repo / "remote")
    shell("dvc", "add", "-q", *outputs, cwd=repo)
    shell("dvc", "push", "-q", cwd=repo)
    return dir_bytes(repo / "remote") - before


def time_training(embedded: Path, sensors: Path, work: Path) -> float:
    """Seconds per epoch of the fusion model on the cached shards: (3 epochs - 1 epoch) / 2, so loading,
    setup and export cancel out."""
    from spectral.stages.train import TrainConfig, train

    seconds = {}
    for epochs in (1, 3):
        started = time.perf_counter()
        train(embedded, sensors, work / f"models_{epochs}", TrainConfig(max_epochs=epochs, logger="none"),
              dvclive_dir=work / f"dvclive_{epochs}")
        seconds[epochs] = time.perf_counter() - started
    return (seconds[3] - seconds[1]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--embed-max", type=int, default=250, help="largest N embedded on this machine")
    parser.add_argument("--train-max", type=int, default=None, help="largest N trained on (default: --embed-max)")
    parser.add_argument("--incremental-n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated archive here")
    parser.add_argument("--synth", default="640x480x5", help="WIDTHxHEIGHTxSECONDS of the generated clips")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    width, height, seconds = (float(v) for v in args.synth.split("x"))
    synth = SynthConfig(width=int(width), height=int(height), duration_s=seconds)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="spectral-scale-"))
    script = work / "stage.py"
    work.mkdir(parents=True, exist_ok=True)
    if not any(n <= args.embed_max for n in args.sizes):
        parser.error("no size is <= --embed-max: add one (embed is measured there and extrapolated above)")
    for stale in work.iterdir():  # a reused --workdir keeps only the generated pool
        if stale.name != "pool":
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    script.write_text(STAGE.format(splits=SPLITS))
    sizes = sorted(args.sizes)
    extra = max(1, round(args.incremental_n / 100))
    pool = work / "pool"
    started = time.perf_counter()
    wanted = max(sizes) + 2 * extra
    if not pool.is_dir() or len(list(pool.iterdir())) < wanted:  # a kept --workdir is reused
        generate(pool, wanted, seed=0, cfg=synth, workers=args.workers)
    generation_s = time.perf_counter() - started
    names = sorted(p.name for p in pool.iterdir())
    # the events folders link into the generated pool: links outside the events folder are followed, as declared
    decode_opts = {"num_frames": args.frames, "workers": args.workers, "links_outside_events": "follow"}
    rows = []
    for n in sizes:
        events = link_events(pool, names[:n], work / f"events_{n}")
        row: dict = {"events": n}
        row["decode"] = run_stage("decode", events, work / f"decoded_{n}", decode_opts, script)
        row["sensors"] = run_stage("sensors", events, work / f"sensors_{n}.parquet", {}, script)
        shard_bytes = sum(p.stat().st_size for p in (work / f"decoded_{n}").glob("*.tar"))
        row["shard_bytes_per_event"] = shard_bytes // n
        if n == sizes[0]:
            npy = run_stage("decode", events, work / "decoded_npy", {**decode_opts, "frame_format": "npy"}, script)
            npy_bytes = sum(p.stat().st_size for p in (work / "decoded_npy").glob("*.tar")) // n
            shutil.rmtree(work / "decoded_npy")
            row["baselines"] = {"npy_shard_bytes_per_event": npy_bytes, "npy_decode": npy,
                                "bytes_vs_npy": round(row["shard_bytes_per_event"] / npy_bytes, 3)}
        if n <= args.embed_max:
            row["embed"] = run_stage("embed", work / f"decoded_{n}", work / f"embedded_{n}", {}, script)
        if n <= args.embed_max and n <= (args.embed_max if args.train_max is None else args.train_max):
            row["train_seconds_per_epoch"] = round(time_training(work / f"embedded_{n}",
                                                                 work / f"sensors_{n}.parquet", work / f"train_{n}"), 2)
        if n != args.incremental_n:  # disk: only the incremental case needs its outputs again
            shutil.rmtree(work / f"decoded_{n}")
            shutil.rmtree(work / f"embedded_{n}", ignore_errors=True)
        rows.append(row)
        print(json.dumps(row))
    measured = [r for r in rows if "embed" in r]
    embed_per_event = measured[-1]["embed"]["seconds"] / measured[-1]["events"] if measured else None
    if measured:
        per_event = measured[-1]["embed"]["seconds"] / measured[-1]["events"]
        for row in rows:
            if "embed" not in row:
                row["embed_extrapolated"] = {"seconds": round(per_event * row["events"], 1),
                                             "from_events": measured[-1]["events"], "extrapolated": True}

    incremental = {}
    n = args.incremental_n
    if n in sizes:
        events = work / f"events_{n}"
        repo = work / "dvcrepo"
        (repo / "data").mkdir(parents=True, exist_ok=True)
        shutil.move(work / f"decoded_{n}", repo / "data" / "decoded")
        shutil.move(work / f"sensors_{n}.parquet", repo / "data" / "sensors.parquet")
        shutil.move(work / f"sensors_{n}_report.json", repo / "data" / "sensors_report.json")
        embed = n <= args.embed_max
        if embed:
            shutil.move(work / f"embedded_{n}", repo / "data" / "embeddings")
        outputs = ["data/decoded", "data/sensors.parquet"] + (["data/embeddings"] if embed else [])
        shell("git", "init", "-q", cwd=repo)
        shell("dvc", "init", "-q", cwd=repo)
        shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")  # the stages' machine-local stamps stay out, as here
        shell("dvc", "remote", "add", "-d", "local", str(repo / "remote"), cwd=repo)
        full_push = dvc_push_bytes(repo, outputs)
        full = next(r for r in rows if r["events"] == n)
        # embed where this CPU cannot run it at N: the full run extrapolated, a re-run estimated from the events
        # in the rewritten shards at the measured seconds per event (both marked)
        full_embed = full["embed"]["seconds"] if embed else full.get("embed_extrapolated", {}).get("seconds", 0)
        full_s = full["decode"]["seconds"] + full["sensors"]["seconds"] + full_embed
        # new events: time-stamped (sort after every existing name), then random names (anywhere)
        stamped = [f"event_2027-01-01T{i:05d}" for i in range(extra)]
        rng = random.Random(0)
        randomly = [f"event_{rng.randrange(n):05d}_{rng.getrandbits(24):06x}" for _ in range(extra)]  # among the old
        spare = names[max(sizes):]
        for label, new_names, sources in (("unchanged", [], []), ("time_stamped", stamped, spare[:extra]),
                                          ("random_names", randomly, spare[extra: 2 * extra])):
            for name, source in zip(new_names, sources, strict=True):
                (events / name).symlink_to(pool / source, target_is_directory=True)
            before = {p.name: p.stat().st_mtime_ns for p in (repo / "data" / "decoded").glob("*.tar")}
            case = {"new_events": len(new_names), "new_event_bytes": sum(dir_bytes(pool / s) for s in sources)}
            case["decode"] = run_stage("decode", events, repo / "data" / "decoded", decode_opts, script)
            case["sensors"] = run_stage("sensors", events, repo / "data" / "sensors.parquet", {}, script)
            if embed:
                case["embed"] = run_stage("embed", repo / "data" / "decoded", repo / "data" / "embeddings", {}, script)
            after = {p.name: p.stat().st_mtime_ns for p in (repo / "data" / "decoded").glob("*.tar")}
            case["decoded_shards_rewritten"] = sorted(set(after) - set(before))
            if not embed and embed_per_event:
                index = json.loads((repo / "data" / "decoded" / "report.json").read_text(encoding="utf-8"))["index"]
                events_to_embed = sum(len(e["accepted"]) for entries in index.values() for e in entries
                                      if e["file"] in case["decoded_shards_rewritten"])
                case["embed_estimated"] = {"seconds": round(events_to_embed * embed_per_event, 1),
                                           "events": events_to_embed, "estimated": True}
            rerun_s = sum(case[s]["seconds"] for s in ("decode", "sensors", "embed", "embed_estimated") if s in case)
            case["decoded_shards_untouched"] = sum(after.get(k) == v for k, v in before.items())
            case["rerun_seconds"] = round(rerun_s, 2)
            case["rerun_vs_full_run"] = round(rerun_s / full_s, 3)
            case["dvc_push_bytes"] = dvc_push_bytes(repo, outputs)
            case["push_vs_new_event_bytes"] = round(case["dvc_push_bytes"] / max(case["new_event_bytes"], 1), 2)
            incremental[label] = case
            print(json.dumps({label: case}))
        incremental = {"events": n, "full_run_seconds": round(full_s, 2), "full_push_bytes": full_push,
                       "embed": "measured" if embed else "full run extrapolated, re-runs estimated (marked)",
                       **incremental}

    result = {
        "events": f"synthetic, {synth.width}x{synth.height} {synth.fps} fps {synth.duration_s} s, "
                  f"{args.frames} frames sampled each; {args.workers} decode workers",
        "generation_seconds": round(generation_s, 1),
        "rows": rows,
        "incremental": incremental,
    }
    print(f"{'N':>6}{'decode s':>10}{'sensors s':>10}{'peak MiB':>10}{'KB/event':>10}{'embed s':>10}")
    for row in rows:
        embed_s = row.get("embed", {}).get("seconds") or f"~{row.get('embed_extrapolated', {}).get('seconds', '-')}"
        print(f"{row['events']:>6}{row['decode']['seconds']:>10}{row['sensors']['seconds']:>10}"
              f"{row['decode']['peak_rss_mib']:>10}{row['shard_bytes_per_event'] // 1000:>10}{embed_s:>10}")
    write_result("scale", result, args.output)
    plot(result, args.output.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    """Cost against N: stage seconds (left) and peak summed RSS (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    n = [r["events"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [r["decode"]["seconds"] for r in rows], "o-", label="decode")
    left.plot(n, [r["sensors"]["seconds"] for r in rows], "o-", label="sensors")
    embed = [(r["events"], r["embed"]["seconds"]) for r in rows if "embed" in r]
    if embed:
        left.plot(*zip(*embed, strict=True), "o-", label="embed")
    guess = [(r["events"], r["embed_extrapolated"]["seconds"]) for r in rows if "embed_extrapolated" in r]
    if guess:
        left.plot(*zip(*guess, strict=True), "x--", label="embed (extrapolated)")
    left.set(xlabel="events", ylabel="seconds (log)", title="stage wall time", yscale="log")
    left.legend()
    right.plot(n, [r["decode"]["peak_rss_mib"] for r in rows], "o-", label="decode")
    right.plot(n, [r["sensors"]["peak_rss_mib"] for r in rows], "o-", label="sensors")
    right.set(xlabel="events", ylabel="MiB", title="peak RSS, all processes", ylim=(0, None))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
