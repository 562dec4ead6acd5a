"""Refining a DP result on the exact objective: the final cost of the plan as `solvers.sample` runs it on
the search samples (the DP optimises a model of that: summed one-step errors, or greedy states).

- grid: coordinate descent on the grid. A move shifts one noise level of the path to the next grid
  level up or down, flips one step's bit, or (with several rules) puts another rule of the same
  calls on one step into sigma > 0; the best move is taken, until none helps (at most `passes` times).
- polish: a pattern search in log sigma, off the grid. A move shifts one level by +-delta and is taken
  if it helps; delta starts at half a grid spacing and halves when a pass over every level finds
  nothing (or after `passes` passes), `halvings` times.
- shift: the same pattern search on each step's eval_shift (solvers/eval_shift.py, LD3's decoupled
  evaluation level), from 0 with delta starting at SHIFT_DELTA, within +-MAX_SHIFT and the grid's
  range.

A move "helps" when it lowers the cost on each half of the search samples (`Cost.beats`). The error of
a few-step plan is dominated by a few samples whose trajectories it bends the wrong way; a move that
mends only those fits the samples rather than the schedule, and on held-out samples it does not help.
The shift stage takes a move that lowers the cost over all samples: a step's evaluation level moves
those worst trajectories most (the halves then disagree), and that gain holds on held-out samples
(benchmarks/RESULTS.md); with the halves rule it found no move on the 16-dim mixture.

Both keep sigma_0 = sigma_max (where the starting latents are) and the way the plan ends (a step into
0, or x_N kept at sigma_N > 0), so the NFE stays; sigmas stay strictly decreasing, in
[sigma_min, sigma_max] of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise

from solvers.eval_shift import MAX_SHIFT, evaluation_level
from solvers.search.problem import Cost, Path, Problem
from solvers.table import SOLVERS

PASSES = 8
HALVINGS = 4
SHIFT_DELTA = 0.1  # the shift stage's first move in log sigma


def _moves(problem: Problem, path: Path) -> Iterator[Path]:
    nodes, zero = path.nodes, len(problem.grid) - 1
    for p in range(1, len(nodes) - (nodes[-1] == zero)):
        above, below = nodes[p - 1], nodes[p + 1] if p + 1 < len(nodes) else zero
        for j in (nodes[p] - 1, nodes[p] + 1):
            if above < j < below:
                yield Path((*nodes[:p], j, *nodes[p + 1 :]), path.bits, path.rules)
    if problem.bit is not None:
        for s in range(len(path.bits)):
            yield Path(nodes, (*path.bits[:s], not path.bits[s], *path.bits[s + 1 :]), path.rules)
    for s, rule in enumerate(path.rules):
        if nodes[s + 1] == zero:  # a step into 0 returns D whatever its rule
            continue
        for other in _alternatives(problem, rule):
            yield Path(nodes, path.bits, (*path.rules[:s], other, *path.rules[s + 1 :]))


def _alternatives(problem: Problem, rule: str) -> list[str]:
    """The other rules of the menu that spend the same calls on a step (so the NFE stays)."""
    return [other for other in problem.menu if other != rule and SOLVERS[other].calls == SOLVERS[rule].calls]


def grid_descent(problem: Problem, path: Path, best: Cost, passes: int = PASSES) -> tuple[Path, Cost]:
    """The path after coordinate descent on the grid from `path` (of final cost `best`), and its cost."""
    for _ in range(passes):
        scored = [
            (problem.run(problem.sigmas(move), move.bits, move.rules), move) for move in _moves(problem, path)
        ]
        helping = [(cost, move) for cost, move in scored if cost.beats(best)]
        if not helping:
            break
        best, path = min(helping, key=lambda item: item[0].total)
    return path, best


def polish(
    problem: Problem,
    sigmas: Sequence[float],
    bits: Sequence[bool],
    rules: Sequence[str],
    best: Cost,
    passes: int = PASSES,
    halvings: int = HALVINGS,
) -> tuple[list[float], Cost]:
    """The sigmas after a pattern search in log sigma from `sigmas` (of final cost `best`), and theirs."""
    lowest = problem.grid[-2]
    movable = range(1, len(sigmas) - (sigmas[-1] == 0))  # sigma_0 and a last 0 stay

    def run(trial: list[float]) -> Cost | None:
        valid = all(s >= lowest for s in trial[1:] if s > 0) and all(a > b for a, b in pairwise(trial))
        return problem.run(trial, bits, rules) if valid else None

    delta = math.log(problem.grid[0] / problem.grid[1]) / 2  # half a spacing of the log-uniform grid
    return _pattern(
        list(sigmas), movable, lambda value, d: value * math.exp(d), run, best, delta, passes, halvings
    )


def tune_shifts(
    problem: Problem,
    sigmas: Sequence[float],
    bits: Sequence[bool],
    rules: Sequence[str],
    best: Cost,
    passes: int = PASSES,
    halvings: int = HALVINGS,
) -> tuple[list[float], Cost]:
    """Each step's eval_shift after a pattern search from 0 (the plain steps, of final cost `best`). The
    levels D is evaluated at stay in [sigma_min, sigma_max] of the grid: a real model's noise table
    ends there (model.Denoiser refuses a sigma outside it)."""
    lowest, highest = problem.grid[-2], problem.grid[0]

    def run(trial: list[float]) -> Cost | None:
        levels = [evaluation_level(sigma, shift) for sigma, shift in zip(sigmas, trial, strict=False)]
        valid = all(abs(v) <= MAX_SHIFT for v in trial) and all(lowest <= s <= highest for s in levels)
        return problem.run(sigmas, bits, rules, trial) if valid else None

    steps = len(sigmas) - 1
    return _pattern(
        [0.0] * steps, range(steps), lambda value, d: value + d, run, best, SHIFT_DELTA, passes, halvings,
        lambda cost, best: cost.total < best.total,
    )  # fmt: skip


def _pattern(
    values: list[float],
    movable: Sequence[int],
    move: Callable[[float, float], float],
    run: Callable[[list[float]], Cost | None],
    best: Cost,
    delta: float,
    passes: int,
    halvings: int,
    accept: Callable[[Cost, Cost], bool] = Cost.beats,
) -> tuple[list[float], Cost]:
    """Pattern search: value p becomes move(value, -delta) or move(value, +delta) where that `run`s (not
    None) and beats `best`; delta halves when a pass finds nothing or after `passes` passes."""
    for _ in range(halvings):
        for _ in range(passes):
            improved = False
            for p in movable:
                for d in (-delta, delta):
                    trial = [*values[:p], move(values[p], d), *values[p + 1 :]]
                    if (cost := run(trial)) is not None and accept(cost, best):
                        best, values, improved = cost, trial, True
                        break
            if not improved:
                break
        delta /= 2
    return values, best


def refine_calls(nfe: int, steps: int, bit: bool, stages: Sequence[str], alternatives: int = 0) -> int:
    """At most this many denoiser calls for the refinement `stages` of a plan of `steps` steps, when a
    step's rule has at most `alternatives` others to try."""
    moves = 2 * steps + (steps if bit else 0) + steps * alternatives
    pattern = HALVINGS * PASSES * 2 * steps
    runs = {"grid": PASSES * moves, "polish": pattern, "shift": pattern}
    return nfe * sum(runs[stage] for stage in stages if stage in runs)
