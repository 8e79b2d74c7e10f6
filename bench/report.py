"""bench/README.md, written from bench/results/*.json: every number there comes from the JSON its benchmark wrote,
so a number cannot drift from its measurement. Prose here carries no number; tables are built from the JSON.

    python bench/report.py            # rewrite bench/README.md after a benchmark wrote new results
    python bench/report.py --check    # exit 1 when bench/README.md is not what the JSON gives (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"


def _pct(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f} %"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def nightly(d: dict) -> list[str]:
    inc = d["incremental"]
    cases = [("unchanged archive (verification alone)", "unchanged"), ("+1 % time-stamped events", "time_stamped"),
             ("+1 % randomly named events", "random_names")]
    rows = []
    for label, key in cases:
        case = inc[key]
        decode, sensors = case["decode"], case["sensors"]
        rows.append([f"{label}: {case['new_events']} new", f"{decode['shards_written']} written, "
                     f"{case['decoded_shards_untouched']} untouched; {decode['events_decoded']} decoded, "
                     f"{decode['events_copied']} copied", f"{decode['seconds']} s / {sensors['seconds']} s",
                     f"{case['embed_estimated']['seconds']:,.0f} s (estimated, {case['embed_estimated']['events']} "
                     f"events)", f"**{_pct(case['rerun_vs_full_run'])}**", _mb(case["dvc_push_bytes"])])
    return [f"{inc['events']:,} events; full run of decode + sensors + embed {inc['full_run_seconds']:,.0f} s "
            f"(embed: {inc['embed']}).", "",
            *_table(["case", "decode shards and events", "decode / sensors", "embed", "re-run vs full run",
                     "`dvc push`"], rows)]


def drift(d: dict) -> list[str]:
    rows = []
    for row in d["rows"]:
        same = row["relative_l2_max"] == 0
        l2 = "0 (same bytes)" if same else (f"{row['relative_l2_mean']:.1e} / {row['relative_l2_p99']:.1e} / "
                                           f"{row['relative_l2_max']:.1e}")
        rows.append([row["recipe"], l2, f"{row['accuracy']:.4f} / {row['macro_f1']:.4f}"])
    return [f"Model `{d['model']}`, evaluated on each recipe's embeddings; baseline `{d['baseline']}`.", "",
            *_table(["recipe", "relative L2 vs baseline: mean / p99 / max", "test accuracy / macro-F1"], rows)]


def faults(d: dict) -> list[str]:
    rows = [[row["fault"], row["grade"], row.get("detail", "")] for row in d["rows"]]
    return [f"{d['events']} events, {d['kills_per_stage']} kills per stage: **{d['silent']} silent losses**, "
            f"{d['failed']} failed checks.", "", *_table(["fault", "grade", "detail"], rows)]


def scale(d: dict) -> list[str]:
    rows = [[f"{row['events']:,}", f"{row['decode']['seconds']} s", f"{row['decode']['peak_rss_mib']:.0f} MiB",
             f"{row['sensors']['seconds']} s", f"{row['sensors']['peak_rss_mib']:.0f} MiB",
             _mb(row["shard_bytes_per_event"])] for row in d["rows"]]
    baseline = next(row for row in d["rows"] if "baselines" in row)
    return [f"{d['events']}. Baseline in the same run: the same events stored as raw npy frames take "
            f"{_mb(baseline['baselines']['npy_shard_bytes_per_event'])} per event.", "",
            *_table(["events", "decode", "decode peak RSS", "sensors", "sensors peak RSS",
                     "h264 shard bytes / event"], rows)]


def frame_cache(d: dict) -> list[str]:
    lines = []
    for key in ("demo_frames", "real_photos"):
        group = d[key]
        rows = [[name, f"{row['bytes_per_frame']:,}", row.get("ratio_vs_npy", ""),
                 f"{row['drift']['rms']} / {row['drift']['max']}"] for name, row in group["rows"].items()]
        lines += [f"{group['what']}:", "", *_table(["frames stored as", "bytes per frame", "smaller than npy by",
                                                   "embedding drift vs raw frames: RMS / max"], rows), ""]
    return lines[:-1]


def embed_cpu(d: dict) -> list[str]:
    ranks = d["ranks"]
    return [f"`{d['backbone']}` ({d['weights']}), {d['precision']}, {d['frames']} frames, batch {d['batch_frames']}.",
            "", *_table(["claim", "stage", "baseline", "ratio"], [
                ["embed stage (reading h264 shards) vs model-only forward", f"{d['stage_frames_per_s']} frames/s",
                 f"{d['model_only_frames_per_s']} frames/s", d["ratio_stage_vs_model"]],
                [f"the stage's frames/s over its own forward seconds ({d['num_workers']} loader process), "
                 f"median of 3 runs", "", "", d["stage_vs_own_model_seconds"]["median"]],
                [f"2 torchrun ranks × {ranks['2']['threads_per_rank']} thread vs 1 process × "
                 f"{ranks['1']['threads_per_rank']} threads", f"{ranks['2']['stage_frames_per_s']} frames/s",
                 f"{ranks['1']['stage_frames_per_s']} frames/s", ranks["ratio_2_vs_1"]]])]


def decode(d: dict) -> list[str]:
    lines = []
    for name, clips in d["sets"].items():
        full = clips["pyav_full_decode"]["frames_per_s"]
        cli = clips["ffmpeg_cli"]
        lines += [f"**{name}**: {clips['clips']} clips of {clips['frames_per_clip']} frames, "
                  f"{clips['bytes_per_clip']:,} bytes each; PyAV single-thread decode of every frame: {full:,} frames/s"
                  + (f"; `ffmpeg -threads 1 -f null`: {cli['frames_per_s']:,} frames/s" if cli else
                     " (no ffmpeg CLI on this machine)") + ".", ""]
        rows = []
        for frames, runs in clips["sampled"].items():
            for reader, run in runs.items():
                if isinstance(run, dict):
                    rate = run.get("sampled_frames_per_s", run.get("frames_per_s"))
                    reader = f"{reader} ({run['clips']} clips)" if "clips" in run else reader
                    rows.append([f"{frames} of {clips['frames_per_clip']}", reader, f"{rate:,}",
                                 f"{run['ratio_vs_full_decode']}×"])
            rows.append([f"{frames} of {clips['frames_per_clip']}", "stage: 2 workers over 1", "",
                         f"{runs['workers_1_to_2']}×"])
        lines += [*_table(["frames", "reader", "sampled frames/s", "time of a full decode / reader's time"], rows), ""]
    for name, counts in d["profile_ms_per_sampled_frame"].items():
        parts = list(next(iter(counts.values())))
        lines += [f"Where a sampled frame's time goes, {name} (ms per sampled frame):", "",
                  *_table(["part", *[f"{frames} of 150" for frames in counts]],
                          [[part, *[counts[frames][part] for frames in counts]] for part in parts]), ""]
    return lines[:-1]


def serve(d: dict) -> list[str]:
    base = d["in_process_predictor"]

    def spread(row: dict) -> str:
        return f"{row['p50_ms']} / {row['p95_ms']} / {row['p99_ms']}"

    rows = [["in-process `Predictor`, one at a time", spread(base), "", "", ""]]
    for level, row in d["concurrency"].items():
        rows.append([f"served, concurrency {level}", spread(row),
                     row["events_per_s"], f"{d['throughput_vs_one_at_a_time'][level]}×",
                     json.dumps(row["errors_by_status"]) if row["errors_by_status"] else "0"])
    long = d["long_uploads_5s_640x480"]
    errors = json.dumps(long["errors_by_status"]) if long["errors_by_status"] else "0"
    rows.append(["served, 5 s 640×480 uploads, one at a time", spread(long), long["events_per_s"], "", errors])
    soak, mixed = d["soak"], d["mixed_20_percent_bad"]
    bad = ", ".join(f"{name} → {'/'.join(map(str, codes))}" for name, codes in mixed["bad"].items())
    return [f"Demo events at the model's {d['frames_per_event']} frames; {d['cpu_cores']} cores.", "",
            *_table(["run", "p50 / p95 / p99 ms", "events/s", "vs one at a time", "errors"], rows), "",
            *_table(["claim", "result"], [
                ["served p50 minus in-process p50 (one at a time)", f"{d['served_p50_minus_in_process_ms']} ms"],
                [f"soak: {soak['requests']:,} requests at concurrency {soak['concurrency']}",
                 f"RSS {soak['rss_after_warm_up_mib']} → {soak['rss_end_mib']} MiB ({soak['rss_growth']:+.1%}), "
                 f"{soak['files_left_in_upload_dir']} files left, errors: "
                 f"{json.dumps(soak['errors_by_status']) if soak['errors_by_status'] else 0}"],
                [f"mixed: {mixed['requests']} requests, every fifth a bad upload",
                 f"{mixed['good_failed']} of {mixed['good']} good requests failed; {bad}"]])]


def train(d: dict) -> list[str]:
    return _table(["claim", "cached shards", "the spec's loop (cv2 + backbone every step)", "ratio"], [
        [f"training samples/s, {d['frames_per_event']} frames, batch {d['batch_size']}, {d['precision']}",
         d["cached_samples_per_s"], d["spec_loop_samples_per_s"], f"{d['ratio']}×"]])


def predict(d: dict) -> list[str]:
    return _table(["claim", "p50", "p95", "batched mean"], [
        [f"`spectral predict` latency from a raw folder, {d['frames_per_event']} frames, {d['device']}, "
         f"{d['events']} events", f"{d['p50_ms']} ms", f"{d['p95_ms']} ms", f"{d['batched_mean_ms']} ms"]])


def repro(d: dict) -> list[str]:
    rows = [[f"{size:,}" if isinstance(size, int) else size, f"{row['full_repro_s']} s", f"{row['noop_repro_s']} s",
             f"{row['train_change_repro_s']} s ({', '.join(row['train_change_ran'])})", f"{row['time_saved_ratio']}×"]
            for size, row in d["sizes"].items()]
    return [f"{d['clips']}.", "", *_table(["events", "full `dvc repro`", "no-op", "after a `train.*` change",
                                          "less time than a full run"], rows)]


def memory(d: dict) -> list[str]:
    rows = [[size, f"{row['decode_peak_rss_mb']} MB", f"{row['sensors_peak_rss_mb']} MB"]
            for size, row in d["sizes"].items()]
    return [f"{d['clips']}.", "", *_table(["events", "decode peak RSS", "sensors peak RSS"], rows)]


def calibration(d: dict) -> list[str]:
    lines = []
    for key, label in (("test", "recorded labels"), ("test_true_class", "the generator's true classes")):
        rows = [[name, row["nll"], row["brier"], row["ece"]] for name, row in d["mean_over_seeds"][key].items()]
        lines += [f"Test split against {label}, mean over {len(d['seeds'])} training seeds:", "",
                  *_table(["calibration", "NLL", "Brier", "ECE"], rows), ""]
    return lines[:-1]


def modality_dropout(d: dict) -> list[str]:
    drops = d["mean_drop_over_seeds"]
    recipes = list(next(iter(drops.values())))
    rows = [[pattern, *(row[name] for name in recipes)] for pattern, row in drops.items()]
    return [f"Mean macro-F1 drop on the {d['split']} split over {len(d['seeds'])} seeds (lower is better); "
            f"candidate = modality dropout {d['candidate_dropout']}.", "", *_table(["modality absent", *recipes], rows)]


def saturation(d: dict) -> list[str]:
    rows = []
    for name, m in d["models"].items():
        val, test, ood = m["val"], m["test"], m["ood"]
        rows.append([name, val["accuracy"], val["nll"], val["ece"], test["accuracy"], test["macro_f1"], test["ece"],
                     f"{test['distinct_vectors']} / {test['events']}, {test['at_ceiling']}",
                     f"{ood['distinct_vectors']} / {ood['events']}, {ood['at_ceiling']}",
                     ood["confidence"]["median"], m["max_softmax_auroc"], ood["flagged_out_of_distribution"],
                     test["flagged_out_of_distribution"]])
    return _table(["train recipe", "val acc", "val NLL", "val ECE", "test acc", "test macro-F1", "test ECE",
                   "test: distinct vectors, at ceiling", "OOD set: distinct vectors, at ceiling",
                   "OOD median confidence", "AUROC of 1 - max p (OOD vs test)", "OOD flagged", "test flagged"], rows)


def plots_page(d: dict) -> list[str]:
    scripts = d["scripts"]
    return [f"![the page](results/{Path(d['screenshot']).name})", "", *_table(
        ["claim", "result"], [["plots on the page", len(d["plots"])],
                              ["scripts loaded by URL (remote / in all)", f"{scripts['remote']} / {scripts['by_src']}"],
                              ["inline scripts (Vega, Vega-Lite, Vega-Embed, one per plot)", scripts["inline"]],
                              ["rendered by headless Chromium with no network", f"{d['render_seconds']} s"]])]


# (results file, title, command, renderer, what it shows: prose without numbers)
SECTIONS: list[tuple[str, str, str, Callable[[dict], list[str]], str]] = [
    ("scale_incremental.json", "Nightly cost of a growing archive",
     "python bench/scale.py --sizes 20 1000 --embed-max 20 --train-max 0 --incremental-n 1000", nightly,
     "Each re-run follows `dvc add` and a push to a local remote, so every reused shard is re-hashed first. "
     "Embed is measured on a small sample and extrapolated (marked)."),
    ("drift.json", "Embedding drift between recipes", "python bench/drift.py", drift,
     "Kernels, threads and batch size are recorded per shard, not keyed on (`embed.reuse: recipe`); "
     "a precision change is another recipe."),
    ("faults.json", "Fault matrix", "python bench/faults.py --events 16 --kills 10", faults,
     "Grades: repaired (outputs byte-identical to a clean run), loud (a command failed naming the cause, and "
     "`dvc repro` gave the clean bytes once the fault was gone), handled (an input fault: the event is accounted for "
     "with its reason). A silent loss or a hang fails the bench."),
    ("plots_page.json", "`dvc plots show` offline", "python bench/plots_page.py", plots_page,
     "The page DVC writes with `.dvc/plots/page.html`: the reliability diagram before and after calibration as two "
     "series, the confusion matrix, the OOD scores of the test split and the OOD set against the flag's threshold, "
     "and the modality ablation as bars, then DVCLive's training curves."),
    ("scale.json", "Decode and sensors at growing sizes", "python bench/scale.py", scale,
     "Wall time grows linearly and peak memory stays flat with the archive."),
    ("frame_cache.json", "Frame cache formats", "python bench/frame_cache.py", frame_cache,
     "Drift is the relative change of the frame embedding against the raw frames; h264 is lossless."),
    ("embed_cpu.json", "Embedding on CPU", "python bench/embed.py --ranks 2", embed_cpu, ""),
    ("decode.json", "Decode against FFmpeg", "python bench/decode.py --profile", decode,
     "Ratios over 1 are faster than decoding every frame. The stage's own seconds exclude the process's startup "
     "(imports); the command rows include it."),
    ("serve.json", "Serving over HTTP", "python bench/serve.py", serve,
     "The server runs as its own process on a loopback port, driven by httpx; the in-process baseline is the same "
     "events through `spectral.inference.Predictor` in the same run."),
    ("train_150frames.json", "Training on cached shards", "python bench/train.py", train,
     "Measured on the AVX-512 machine."),
    ("predict_cpu.json", "Predict latency", "python bench/predict.py", predict,
     "Measured on the AVX-512 machine; needs the demo's `models/model.pt`."),
    ("repro.json", "Selective re-runs", "python bench/repro.py", repro, "Measured on the AVX-512 machine."),
    ("memory.json", "Peak memory", "python bench/memory.py", memory, "Measured on the AVX-512 machine."),
    ("calibration.json", "Calibration choices", "python bench/calibration.py", calibration,
     "Fitted on validation, scored on test; the exported model uses temperature + label noise."),
    ("saturation.json", "Saturated answers: training recipes",
     'python bench/saturation.py --candidates "cross-entropy:logit_norm=0" '
     '"label smoothing 0.1:logit_norm=0,label_smoothing=0.1" "logit_norm 0.1 (shipped):" '
     '"logit_norm 0.04:logit_norm=0.04"', saturation,
     "Every recipe with the exported model's embedding clipping and calibration bound; chosen on the validation "
     "columns. At ceiling: answers whose softmax is 1 to six decimals; distinct vectors to six decimals. "
     "`python bench/saturation.py` alone prints the per-branch diagnosis of `models/model.pt`."),
    ("modality_dropout.json", "Modality dropout", "python bench/modality_dropout.py", modality_dropout,
     "Chosen on validation; the drop is paired with the same model's all-modality score."),
]

HEADER = """# Benchmarks

Each script prints a table and writes `bench/results/<name>.json`, always against a baseline measured in the same
run. This page is written from those files by `python bench/report.py` (a test fails when it is stale), so every
number below is the one its benchmark recorded, with the machine it ran on. GPU numbers wait for a GPU machine:
`bash bench/gpu.sh` is the prepared run.
"""


def render() -> str:
    parts = [HEADER]
    for name, title, command, renderer, note in SECTIONS:
        path = RESULTS / name
        data = json.loads(path.read_text(encoding="utf-8"))
        parts += [f"## {title}", "", f"`{command}` → `bench/results/{name}`; {data['machine']}; {data['date']}",
                  "", *renderer(data), ""]
        if note:
            parts += [note, ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when bench/README.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if README.read_text(encoding="utf-8") != text:
            sys.exit("bench/README.md differs from bench/results/*.json: run `python bench/report.py`")
        print("bench/README.md matches bench/results/*.json")
        return
    README.write_text(text, encoding="utf-8")
    print(f"wrote {README}")


if __name__ == "__main__":
    main()
