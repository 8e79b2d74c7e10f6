"""What every stage runs on: reuse keys and indexes, shards, splits, torchrun ranks, devices, provenance and deps."""
