"""Benchmarks (`bulwark bench NAME`): ratios against a raw baseline taken in the same run."""
