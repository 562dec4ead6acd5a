"""Refining a DP result on the exact objective: the final cost of the plan as `solvers.sample` runs it on
the search samples (the DP optimises a model of that: summed one-step errors, or greedy states).

- grid: coordinate descent on the grid. A move shifts one noise level of the path to the next grid
  level up or down, or flips one step's bit; the best move is taken, until none helps (at most
  `passes` times).
- polish: a pattern search in log sigma, off the grid. A move shifts one level by +-delta and is taken
  if it helps; delta starts at half a grid spacing and halves when a pass over every level finds
  nothing (or after `passes` passes), `halvings` times.

A move "helps" when it lowers the cost on each half of the search samples (`Cost.beats`). The error of
a few-step plan is dominated by a few samples whose trajectories it bends the wrong way; a move that
mends only those fits the samples rather than the schedule, and on held-out samples it does not help.

Both keep sigma_0 = sigma_max (where the starting latents are) and the way the plan ends (a step into
0, or x_N kept at sigma_N > 0), so the NFE stays; sigmas stay strictly decreasing, in
[sigma_min, sigma_max] of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import pairwise

from solvers.search.problem import Cost, Path, Problem

PASSES = 8
HALVINGS = 4


def _moves(problem: Problem, path: Path) -> Iterator[Path]:
    nodes, zero = path.nodes, len(problem.grid) - 1
    for p in range(1, len(nodes) - (nodes[-1] == zero)):
        above, below = nodes[p - 1], nodes[p + 1] if p + 1 < len(nodes) else zero
        for j in (nodes[p] - 1, nodes[p] + 1):
            if above < j < below:
                yield Path((*nodes[:p], j, *nodes[p + 1 :]), path.bits)
    if problem.bit is not None:
        for s in range(len(path.bits)):
            yield Path(nodes, (*path.bits[:s], not path.bits[s], *path.bits[s + 1 :]))


def grid_descent(problem: Problem, path: Path, best: Cost, passes: int = PASSES) -> tuple[Path, Cost]:
    """The path after coordinate descent on the grid from `path` (of final cost `best`), and its cost."""
    for _ in range(passes):
        scored = [(problem.run(problem.sigmas(move), move.bits), move) for move in _moves(problem, path)]
        helping = [(cost, move) for cost, move in scored if cost.beats(best)]
        if not helping:
            break
        best, path = min(helping, key=lambda item: item[0].total)
    return path, best


def polish(
    problem: Problem,
    sigmas: Sequence[float],
    bits: Sequence[bool],
    best: Cost,
    passes: int = PASSES,
    halvings: int = HALVINGS,
) -> tuple[list[float], Cost]:
    """The sigmas after a pattern search in log sigma from `sigmas` (of final cost `best`), and theirs."""
    sigmas, lowest = list(sigmas), problem.grid[-2]
    movable = range(1, len(sigmas) - (sigmas[-1] == 0))  # sigma_0 and a last 0 stay
    delta = math.log(problem.grid[0] / problem.grid[1]) / 2  # half a spacing of the log-uniform grid
    for _ in range(halvings):
        for _ in range(passes):
            improved = False
            for p in movable:
                for factor in (math.exp(-delta), math.exp(delta)):
                    trial = [*sigmas[:p], sigmas[p] * factor, *sigmas[p + 1 :]]
                    valid = trial[p] >= lowest and all(a > b for a, b in pairwise(trial))
                    if valid and (cost := problem.run(trial, bits)).beats(best):
                        best, sigmas, improved = cost, trial, True
                        break
            if not improved:
                break
        delta /= 2
    return sigmas, best


def refine_calls(nfe: int, steps: int, bit: bool, stages: Sequence[str]) -> int:
    """At most this many denoiser calls for the refinement `stages` of a plan of `steps` steps."""
    moves = 2 * steps + (steps if bit else 0)
    runs = {"grid": PASSES * moves, "polish": HALVINGS * PASSES * 2 * steps}
    return nfe * sum(runs[stage] for stage in stages if stage in runs)
