"""One module per `dvc.yaml` stage, named as the stage: each turns its inputs and config into its outputs.

Only `pipeline/` scripts and `spectral.cli` import these; library code below them never does.
"""
