"""`spectral` command line: each subcommand is one library call, the same one its DVC stage makes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spectral.events import DEFAULT_MAX_REJECTED_FRACTION, LINK_POLICIES, MISSING_MODALITY_POLICIES
from spectral.frames import FORMATS
from spectral.splits import SPLITS


def _splits(text: str) -> dict[str, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != len(SPLITS):
        raise argparse.ArgumentTypeError("give three fractions: train,val,test")
    return dict(zip(SPLITS, values, strict=True))


def _cmd_synth(args: argparse.Namespace) -> None:
    from spectral.synth import SynthConfig, generate

    cfg = SynthConfig(fps=args.fps, duration_s=args.duration, width=args.width, height=args.height,
                      difficulty=args.difficulty, label_noise=args.label_noise)
    folders = generate(args.out, args.events, args.seed, cfg, workers=args.workers)
    print(f"wrote {len(folders)} events to {args.out}")


def _cmd_ood_set(args: argparse.Namespace) -> None:
    from spectral.oodset import generate_ood

    folders = generate_ood(args.out, args.events, args.seed)
    print(f"wrote {len(folders)} out-of-distribution events to {args.out}")


def _cmd_decode(args: argparse.Namespace) -> None:
    from spectral.decode import DecodeConfig, run_decode
    from spectral.distributed import stage_ranks

    cfg = DecodeConfig(num_frames=args.frames, size=args.size, audio_seconds=args.audio_seconds,
                       backend=args.backend, splits=args.splits,
                       frame_format=args.frame_format, jpeg_quality=args.jpeg_quality, shard_events=args.shard_events,
                       max_shard_events=4 * args.shard_events, workers=args.workers, strict=args.strict,
                       max_rejected_fraction=args.max_rejected_fraction, missing_modality=args.missing_modality,
                       links_outside_events=args.links_outside_events)
    with stage_ranks() as ranks:  # under `torchrun ... -m spectral decode`, one rank of it
        report = run_decode(args.events_dir, args.out_dir, cfg, ranks)
    if not ranks.is_main:
        return
    print(f"accepted {report['accepted_count']}, rejected {report['rejected_count']} "
          f"in {report['seconds']} s; report: {args.out_dir / 'report.json'}")


def _cmd_sensors(args: argparse.Namespace) -> None:
    from spectral.features.table import run_sensors

    report = run_sensors(args.events_dir, args.out, args.splits, strict=args.strict,
                         max_rejected_fraction=args.max_rejected_fraction, missing_modality=args.missing_modality,
                       links_outside_events=args.links_outside_events)
    print(f"accepted {report['accepted_count']}, rejected {report['rejected_count']}; table: {args.out}")


def _cmd_embed(args: argparse.Namespace) -> None:
    from spectral.distributed import stage_ranks
    from spectral.embed import EmbedConfig, run_embed

    cfg = EmbedConfig(backbone=args.backbone, weights=args.weights, device=args.device, precision=args.precision,
                      batch_frames=args.batch_frames, cpu_threads=args.cpu_threads, reuse=args.reuse)
    with stage_ranks() as ranks:
        result = run_embed(args.decoded_dir, args.out_dir, cfg, ranks)
    if ranks.is_main:
        print(json.dumps(result["throughput"]))


def _cmd_train(args: argparse.Namespace) -> None:
    from spectral.training import TrainConfig, train

    cfg = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      logger=args.logger)
    summary = train(args.embed_dir, args.sensors, args.out_dir, cfg, args.weights)
    if summary is not None:  # None on DDP ranks other than 0
        print(json.dumps(summary, indent=2))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from spectral.evaluation import evaluate, format_report

    print(format_report(evaluate(args.model, args.embed_dir, args.sensors, args.metrics, args.plots,
                                 ood_dir=args.ood)))


def _cmd_report(args: argparse.Namespace) -> None:
    from spectral.evaluation import format_report

    print(format_report(json.loads(args.metrics.read_text(encoding="utf-8"))))


def _cmd_predict(args: argparse.Namespace) -> None:
    from spectral.inference import Predictor

    predictor = Predictor(args.model, device=args.device)
    for result in predictor.predict(args.events, batch_size=args.batch_size):
        print(json.dumps(result, ensure_ascii=False), flush=True)


def _cmd_verify(args: argparse.Namespace) -> None:
    from spectral.reuse import read_complete_index, verify_all

    damaged = 0
    for folder in args.folders:
        name = "report.json" if (folder / "report.json").is_file() else "manifest.json"
        index = read_complete_index(folder / name)  # strict: a damaged or interrupted index is an error here
        records = ({entry["file"]: entry for entries in index["index"].values() for entry in entries if entry["sha256"]}
                   if index["stage"] == "decode" else index["index"])
        problems = verify_all(folder, records)
        damaged += len(problems)
        print(f"{folder}: {len(records) - len(problems)} of {len(records)} shard(s) match their index")
        for file, problem in problems.items():
            print(f"  {file}: {problem}")
    if damaged:
        raise RuntimeError(f"{damaged} shard(s) damaged: `dvc repro` recomputes them (or `dvc pull` fetches "
                           f"the committed ones)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write synthetic event folders (demo and test data)")
    p.add_argument("out", type=Path)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--difficulty", type=float, default=0.5)
    p.add_argument("--label-noise", type=float, default=0.03)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("ood-set", help="write out-of-distribution event folders (real photos, lavfi, speech-like)")
    p.add_argument("out", type=Path)
    p.add_argument("--events", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_ood_set)

    p = sub.add_parser("decode", help="event folders -> WebDataset shards of frames + audio")
    p.add_argument("events_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--audio-seconds", type=float, default=5.0, help="audio window: trimmed or zero-padded to it")
    p.add_argument("--backend", choices=("pyav", "decord"), default="pyav")
    p.add_argument("--splits", type=_splits, default=_splits("0.7,0.15,0.15"))
    p.add_argument("--frame-format", choices=FORMATS, default="h264", help="how frames are stored (README)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--shard-events", type=int, default=16, help="mean events per content-defined shard")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strict", action="store_true", help="stop at the first rejected event")
    p.add_argument("--max-rejected-fraction", type=float, default=DEFAULT_MAX_REJECTED_FRACTION,
                   help="fail when more of the events than this are rejected")
    p.add_argument("--missing-modality", choices=MISSING_MODALITY_POLICIES, default="reject",
                   help="keep: an event whose file of this stage is missing/undecodable is kept, the modality masked")
    p.add_argument("--links-outside-events", choices=LINK_POLICIES, default="refuse",
                   help="follow: read symlinks that resolve outside the events folder and its DVC cache")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("sensors", help="event folders -> Parquet table of sensor features")
    p.add_argument("events_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--splits", type=_splits, default=_splits("0.7,0.15,0.15"))
    p.add_argument("--strict", action="store_true")
    p.add_argument("--max-rejected-fraction", type=float, default=DEFAULT_MAX_REJECTED_FRACTION,
                   help="fail when more of the events than this are rejected")
    p.add_argument("--missing-modality", choices=MISSING_MODALITY_POLICIES, default="reject",
                   help="keep: an event whose file of this stage is missing/undecodable is kept, the modality masked")
    p.add_argument("--links-outside-events", choices=LINK_POLICIES, default="refuse",
                   help="follow: read symlinks that resolve outside the events folder and its DVC cache")
    p.set_defaults(func=_cmd_sensors)

    p = sub.add_parser("embed", help="decoded shards -> frozen-backbone frame embedding shards")
    p.add_argument("decoded_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="packaged", help="packaged | hub | path to a weights file")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--batch-frames", type=int, default=64)
    p.add_argument("--cpu-threads", type=int, default=2,
                   help="intra-op threads per process on CPU (they change the CPU embedding bytes by ~1e-5)")
    p.add_argument("--reuse", default="recipe", choices=("recipe", "same_device"),
                   help="reuse shards made with the same recipe on any machine, or only on this device")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("train", help="train the fusion model on cached shards")
    p.add_argument("embed_dir", type=Path)
    p.add_argument("sensors", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--weights", default="packaged", help="backbone weights source, as used by embed")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logger", default="dvclive", choices=("dvclive", "wandb", "none"))
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="test-split metrics, calibration, OOD, ablation and plots")
    p.add_argument("model", type=Path)
    p.add_argument("embed_dir", type=Path)
    p.add_argument("sensors", type=Path)
    p.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    p.add_argument("--plots", type=Path, default=Path("plots"))
    p.add_argument("--ood", type=Path, help="event folders unlike the training data (e.g. data/ood_events or your "
                                            "own recordings): AUROC and detection rate of the OOD flag")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="print an evaluation metrics file as a table")
    p.add_argument("metrics", type=Path, nargs="?", default=Path("metrics/evaluate.json"))
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("verify", help="read every shard of decoded/embedded folders in full against its index")
    p.add_argument("folders", type=Path, nargs="*", default=[Path("data/decoded"), Path("data/embeddings")])
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("predict", help="classify raw event folders; one JSON object per event")
    p.add_argument("events", type=Path, nargs="+")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"spectral {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
