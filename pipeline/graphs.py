"""A run's whole step loop, for one plan and batch shape, as one CUDA graph (`torch.cuda.CUDAGraph`).

A graph replays the kernels of one captured run on the same memory. So the run's inputs (the initial
latent, the step noise, the conditioning) live in static buffers that each new run copies into, and
its outputs (the final latent, the per-step finite flags) are read from the memory the captured run
wrote. Capture needs a run that copies nothing from the host and never waits for the device: the
prepared plan gives that (`solvers.prepare`: the options read on the device, the step noise drawn
ahead; `model.Denoiser.prepare`: the coefficients), and the eager warm-up runs before the capture
compile the U-Net and fill the denoiser's coefficient table.

Off CUDA the same object runs the loop eagerly over the same buffers: what the CPU tests exercise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

WARMUP_RUNS = 2  # the first compiles; the second runs as the captured run will (CUDA graph docs)


def clone(tree: Any) -> Any:
    """Tensors (in dicts, tuples) copied into new memory."""
    if isinstance(tree, Mapping):
        return {k: clone(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(clone(v) for v in tree)
    return tree.clone()


def copy_into(static: Any, values: Any) -> None:
    """Copy `values` into the buffers `static` of the same structure and shapes."""
    if isinstance(static, Mapping):
        if set(static) != set(values):
            raise ValueError(f"expected inputs {sorted(static)}, got {sorted(values)}")
        for k in static:
            copy_into(static[k], values[k])
    elif static.shape != values.shape:
        raise ValueError(f"a captured run takes shape {tuple(static.shape)}, got {tuple(values.shape)}")
    else:
        static.copy_(values)


class StaticLoop:
    """`loop(inputs) -> outputs` over static input buffers: captured once as a CUDA graph when the
    inputs are on CUDA, then each call copies its inputs in and replays; elsewhere each call runs
    `loop` eagerly on the buffers. `inputs` are tensors or dicts of them; so are the outputs."""

    def __init__(self, loop: Callable[[Any], Any], inputs: Mapping[str, Any]):
        self.loop = loop
        self.inputs = clone(inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None
        if _device(self.inputs).type == "cuda":
            self._capture()

    def _capture(self) -> None:
        side = torch.cuda.Stream()  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.loop(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.loop(self.inputs)

    def __call__(self, inputs: Mapping[str, Any]) -> Any:
        copy_into(self.inputs, inputs)
        if self.graph is None:
            return self.loop(self.inputs)
        self.graph.replay()
        return clone(self.outputs)  # the next replay overwrites them


def _device(tree: Any) -> torch.device:
    while isinstance(tree, Mapping):
        tree = next(iter(tree.values()))
    return tree.device
