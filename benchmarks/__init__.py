"""Speed and memory scripts, run from the checkout's root as modules: `python -m benchmarks.load`.
Each prints a ratio against a reference measured in the same run; RESULTS.md records them."""
