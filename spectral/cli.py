"""`spectral` command line: a stage's subcommand is one library call with the config its DVC stage builds
(params.yaml, then -S overrides); predict, report and verify work on what the stages made."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spectral.runtime.stage import configure_logging


class EventsFailed(RuntimeError):
    """Some events got an error object instead of a prediction: exit status 1, not 0."""


def stage_params(args: argparse.Namespace) -> dict:
    """params.yaml as the stage reads it (or the defaults where there is none), with the command's -S overrides."""
    from spectral.runtime.params import load_params

    return load_params(None if args.params == "none" else Path(args.params), args.set)


def stage_config(args: argparse.Namespace) -> object:
    """The config the subcommand runs: its stage's config class built from the params, as the stage builds it."""
    return args.config_class().from_params(stage_params(args))


def _synth_config():
    from spectral.stages.synth import SynthStageConfig

    return SynthStageConfig


def _ood_config():
    from spectral.stages.ood import OodConfig

    return OodConfig


def _decode_config():
    from spectral.stages.decode import DecodeConfig

    return DecodeConfig


def _sensors_config():
    from spectral.stages.sensors import SensorsConfig

    return SensorsConfig


def _embed_config():
    from spectral.stages.embed import EmbedConfig

    return EmbedConfig


def _train_config():
    from spectral.stages.train import TrainConfig

    return TrainConfig


def _cmd_synth(args: argparse.Namespace) -> None:
    from spectral.stages.synth import run_synth

    folders = run_synth(args.out, stage_config(args))
    print(f"wrote {len(folders)} events to {args.out}")


def _cmd_ood(args: argparse.Namespace) -> None:
    from spectral.stages.ood import generate_ood

    cfg = stage_config(args)
    folders = generate_ood(args.out, cfg.events, cfg.seed)
    print(f"wrote {len(folders)} out-of-distribution events to {args.out}")


def _cmd_decode(args: argparse.Namespace) -> None:
    from spectral.runtime.distributed import stage_ranks
    from spectral.stages.decode import run_decode

    cfg = stage_config(args)
    with stage_ranks() as ranks:  # under `torchrun ... -m spectral decode`, one rank of it
        report = run_decode(args.events_dir, args.out_dir, cfg, ranks)
    if not ranks.is_main:
        return
    print(f"accepted {report['accepted_count']}, rejected {report['rejected_count']} "
          f"in {report['seconds']} s; report: {args.out_dir / 'report.json'}")


def _cmd_sensors(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from spectral.stages.sensors import run_sensors

    report = run_sensors(args.events_dir, args.out, **asdict(stage_config(args)))
    print(f"accepted {report['accepted_count']}, rejected {report['rejected_count']}; table: {args.out}")


def _cmd_embed(args: argparse.Namespace) -> None:
    from spectral.runtime.distributed import stage_ranks
    from spectral.stages.embed import run_embed

    cfg = stage_config(args)
    with stage_ranks() as ranks:
        result = run_embed(args.decoded_dir, args.out_dir, cfg, ranks)
    if ranks.is_main:
        print(json.dumps(result["throughput"]))


def _cmd_train(args: argparse.Namespace) -> None:
    from spectral.stages.train import train

    summary = train(args.embed_dir, args.sensors, args.out_dir, stage_config(args))
    if summary is not None:  # None on DDP ranks other than 0
        print(json.dumps(summary, indent=2))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from spectral.stages.evaluate import evaluate, format_report

    print(format_report(evaluate(args.model, args.embed_dir, args.sensors, args.metrics, args.plots,
                                 ood_dir=args.ood)))


def _cmd_report(args: argparse.Namespace) -> None:
    from spectral.stages.evaluate import format_report

    print(format_report(json.loads(args.metrics.read_text(encoding="utf-8"))))


def _cmd_predict(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from spectral.inference import Predictor

    predictor = Predictor(args.model, device=args.device)
    failed = 0
    results = predictor.predict(args.events, batch_size=args.batch_size)
    for result in tqdm(results, total=len(args.events), desc="predict", unit="event", file=sys.stderr):
        failed += "error" in result
        print(json.dumps(result, ensure_ascii=False), flush=True)
    if failed:  # every result is on stdout; the exit status says not all of them are predictions
        raise EventsFailed(f"{failed} of {len(args.events)} event(s) could not be classified (their error objects "
                           f"are on stdout)")


def _cmd_verify(args: argparse.Namespace) -> None:
    from spectral.runtime.reuse import read_complete_index, verify_all

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


def _stage_parser(sub, name: str, help_text: str, config_class, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Runs what the `{name}` DVC stage runs: "
                       f"its config comes from params.yaml (defaults where there is none), overridden by -S.")
    p.add_argument("--params", default="params.yaml",
                   help="the params file to read (default: params.yaml when present; 'none': the defaults)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param, as `dvc exp run -S` does (e.g. -S video.num_frames=16); repeatable")
    p.set_defaults(func=func, config_class=config_class)  # a function returning the class: imported when run
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = _stage_parser(sub, "synth", "write synthetic event folders (demo and test data)", _synth_config, _cmd_synth)
    p.add_argument("out", type=Path)

    p = _stage_parser(sub, "ood", "write out-of-distribution event folders (real photos, lavfi, speech-like)",
                      _ood_config, _cmd_ood)
    p.add_argument("out", type=Path)

    p = _stage_parser(sub, "decode", "event folders -> WebDataset shards of frames + audio", _decode_config,
                      _cmd_decode)
    p.add_argument("events_dir", type=Path)
    p.add_argument("out_dir", type=Path)

    p = _stage_parser(sub, "sensors", "event folders -> Parquet table of sensor features", _sensors_config,
                      _cmd_sensors)
    p.add_argument("events_dir", type=Path)
    p.add_argument("out", type=Path)

    p = _stage_parser(sub, "embed", "decoded shards -> frozen-backbone frame embedding shards", _embed_config,
                      _cmd_embed)
    p.add_argument("decoded_dir", type=Path)
    p.add_argument("out_dir", type=Path)

    p = _stage_parser(sub, "train", "train the fusion model on cached shards", _train_config, _cmd_train)
    p.add_argument("embed_dir", type=Path)
    p.add_argument("sensors", type=Path)
    p.add_argument("out_dir", type=Path)

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
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_cmd_predict)

    _add_serve(sub)
    return parser


def _cmd_serve(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from spectral.serving.config import ServeConfig, UploadLimits

    try:
        from spectral.serving.server import serve
    except ImportError as err:
        raise SystemExit(f"spectral serve needs the serve extra: pip install -e '.[serve]' ({err})") from None
    limits = UploadLimits(**{f.name: getattr(args, f.name) for f in fields(UploadLimits)})
    serve(ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig) if f.name != "limits"},
                      limits=limits))


_SERVE_HELP = {
    "model": "the exported model", "host": "address to listen on (0.0.0.0: every interface)",
    "device": "auto (a GPU where present), cpu or cuda",
    "max_batch_size": "requests predicted together (default: 8 on a GPU, 1 on a CPU)",
    "batch_timeout": "seconds a batch waits to fill", "max_queue": "requests in flight before 503 + Retry-After",
    "api_key_env": "environment variable holding the API key clients send as X-API-Key",
    "upload_dir": "where the per-request folders go (default: the system temp dir)",
}


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """Every ServeConfig and UploadLimits field is a flag with the dataclass's default (docs/serving.md)."""
    from dataclasses import MISSING, fields

    from spectral.serving.config import ServeConfig, UploadLimits

    p = sub.add_parser("serve", help="serve the model over HTTP: POST /predict, GET /health, GET /model",
                       description="Serve the model over HTTP (docs/serving.md). Needs the serve extra.")
    for f in [*(f for f in fields(ServeConfig) if f.name != "limits"), *fields(UploadLimits)]:
        default = None if f.default is MISSING else f.default
        kind = {"model": Path, "upload_dir": Path, "max_batch_size": int}.get(f.name) or type(default or "")
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default, dest=f.name,
                       help=f"{_SERVE_HELP.get(f.name, 'upload limit')} (default: {default})")
    p.set_defaults(func=_cmd_serve)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EventsFailed as err:
        print(f"spectral {args.command}: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"spectral {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
