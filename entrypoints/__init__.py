"""The top layer: what a person or a supervisor starts (CLI, launcher, chaos experiments, benchmarks).

Layers only point down: `entrypoints` → `services` → `libs` → `proto` (checked by `lint-imports`).
"""
