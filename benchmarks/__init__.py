"""Benchmarks: classical-codec baselines (`classical`) and the merged report (`report`)."""
