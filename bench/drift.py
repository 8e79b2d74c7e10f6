"""How far embeddings move between the recipes machines of different kinds compute, and what that does to
the demo model: the evidence behind reusing a shard wherever its recipe (frames, backbone, weights,
precision, stored dtype) is the same, whatever kernels and threads made it (`embed.reuse: recipe`).

Each recipe re-embeds the demo's decoded shards in its own process, with the kernels it names forced
through the environment (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`) or with another thread count or
precision. Baseline in the same run: the pipeline's own `data/embeddings` and the model trained on them.
Per recipe: relative L2 of each frame embedding against the baseline's (mean, 99th percentile, max), and
the demo model's test accuracy / macro-F1 evaluated on that recipe's embeddings (trained on the baseline's).

    python bench/drift.py                       # after `make demo`; ~2 min per fp32 recipe on 2 cores
    python bench/drift.py --recipes threads_1 bf16
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import RESULTS, pipeline_outputs_parser, write_result

from spectral.runtime.shards import read_samples
from spectral.stages.evaluate import evaluate

RECIPES = {  # name → (environment, embed config overrides)
    "cpu_default_kernels": ({"ATEN_CPU_CAPABILITY": "default"}, {}),
    "onednn_sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "threads_1": ({}, {"cpu_threads": 1}),
    "batch_16": ({}, {"batch_frames": 16}),
    "bf16": ({}, {"precision": "bf16"}),
}

EMBED = """
import json, sys
from pathlib import Path
from spectral.stages.embed import EmbedConfig, run_embed
manifest = run_embed(Path(sys.argv[1]), Path(sys.argv[2]), EmbedConfig(**json.loads(sys.argv[3])))
print(json.dumps({"made_by": manifest["made_by"], "precision": manifest["precision"],
                  "seconds": manifest["throughput"]["stage_seconds"]}))
"""


def embeddings(directory: Path) -> dict[str, np.ndarray]:
    """Every sample's frame embeddings (float32), by key, from the shards the manifest lists."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    return {s["__key__"]: np.asarray(s["emb.npy"], dtype=np.float32)
            for s in read_samples([directory / file for file in sorted(manifest["index"])]) if "emb.npy" in s}


def drift(baseline: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict:
    """Relative L2 per frame embedding, ||other - baseline|| / ||baseline||, over every frame of every event."""
    ratios = np.concatenate([np.linalg.norm(other[key] - value, axis=1) / np.linalg.norm(value, axis=1)
                             for key, value in sorted(baseline.items())])
    return {"relative_l2_mean": float(ratios.mean()), "relative_l2_p99": float(np.percentile(ratios, 99)),
            "relative_l2_max": float(ratios.max()), "frames": int(ratios.size)}


def scores(model: Path, embedded: Path, sensors: Path, work: Path) -> dict:
    metrics = evaluate(model, embedded, sensors, work / "metrics.json", work / "plots")
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "accuracy_interval": metrics["intervals"]["accuracy"]}


def main() -> None:
    parser = pipeline_outputs_parser(__doc__)
    parser.add_argument("--decoded", type=Path, default=Path("data/decoded"))
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--output", type=Path, default=RESULTS / "drift.json")
    args = parser.parse_args()
    base_config = json.loads((args.embeddings / "manifest.json").read_text(encoding="utf-8"))
    baseline = embeddings(args.embeddings)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spectral-drift-") as tmp:
        work = Path(tmp)
        base_row = {"recipe": "baseline (data/embeddings)", "made_by": base_config["made_by"],
                    "precision": base_config["precision"], "relative_l2_mean": 0.0, "relative_l2_p99": 0.0,
                    "relative_l2_max": 0.0, **scores(args.model, args.embeddings, args.sensors, work / "baseline")}
        rows.append(base_row)
        print(json.dumps(base_row))
        for name in args.recipes:
            environment, overrides = RECIPES[name]
            out = work / name
            config = {"batch_frames": base_config["made_by"][0]["batch_frames"], **overrides}
            result = subprocess.run([sys.executable, "-c", EMBED, str(args.decoded), str(out / "embeddings"),
                                     json.dumps(config)], env={**os.environ, **environment},
                                    capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"{name}: embed failed:\n{result.stderr[-3000:]}")
            made = json.loads(result.stdout.strip().splitlines()[-1])
            row = {"recipe": name, "environment": environment, "config": overrides, **made,
                   **drift(baseline, embeddings(out / "embeddings")),
                   **scores(args.model, out / "embeddings", args.sensors, out)}
            rows.append(row)
            print(json.dumps(row))
    print(f"\n{'recipe':<28}{'kernels':<30}{'prec':>6}{'rel L2 mean':>13}{'p99':>10}{'max':>10}{'acc':>8}{'F1':>8}")
    for row in rows:
        kernels = ", ".join(m["kernels"].partition(", ")[2] for m in row["made_by"])
        print(f"{row['recipe']:<28}{kernels:<30}{row['precision'][:6]:>6}{row['relative_l2_mean']:>13.2e}"
              f"{row['relative_l2_p99']:>10.2e}{row['relative_l2_max']:>10.2e}{row['accuracy']:>8.4f}"
              f"{row['macro_f1']:>8.4f}")
    result = {"model": str(args.model), "baseline": str(args.embeddings), "rows": rows,
              "accuracy_change": {r["recipe"]: round(r["accuracy"] - base_row["accuracy"], 4) for r in rows[1:]}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output.stem, result) if args.output.parent == RESULTS else \
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
