"""Dynamic programming over the candidate grid with both cost models, a free terminal level, the
optional per-step bit and the rule of each step, and brute-force enumeration of the same objectives
to check it.

A node (n, j, b) is the state at grid level j after n denoiser calls, b the bit of the step into it.
An edge i -> j is one step of one of the problem's rules spending its `calls` calls (a step into 0:
one). Every rule of an edge goes on from the same D at i, so a menu of one-call rules costs the DP no
more denoiser calls than one rule does. A path spends exactly the budget and ends either at some
sigma_j > 0, keeping x_N (the paper's final policy), or with a step into 0.

- local (GITS, Chen et al. 2024): each step starts from the teacher's state at i; it costs its RMSE to
  the teacher at j. A path costs the sum over its steps, plus, when it stops at sigma_j > 0, the
  teacher's own RMSE there to x(0) (what stopping early leaves). Additive: for one-step rules the DP
  finds the exact optimum.
- global (OSS, Pei et al. 2025): each step starts from the student's own state, so errors propagate.
  A node keeps the state of the path that is closest to the teacher there; a path costs the final cost
  of its last state. Keeping one state per node assumes the path closest to the teacher at j is also
  the best one to go on from (OSS's assumption; not exact in general).

Multistep rules read the path's history (whichever rules took its steps, as `solvers.sample` runs a
mixed plan): each node carries its best path's history (the teacher's D along it for local, the
student's own for global). That too assumes that the best path into a node is the best one to go on
from. `brute_force` enumerates every path of a small grid under the exact
objective (for global: the plan sampled by `solvers.sample`) to measure what these assumptions cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property, partial

from solvers.search.problem import Path, Problem, rmse
from solvers.search.state import State, advance
from solvers.table import SOLVERS

Key = tuple[int, int, bool]  # (calls spent, grid index, bit of the step into it)


@dataclass
class _Node:
    value: float
    parent: Key | None
    rule: str  # of the step into it ("" at the start)
    state: State | None  # dropped once the node is expanded


@dataclass(frozen=True)
class Lattice:
    """Which nodes and steps exist: the grid, the rules a step may take, the budget, the bit."""

    grid: tuple[float, ...]
    rules: tuple[str, ...]
    nfe: int
    bits: tuple[bool, ...] = (False,)

    @classmethod
    def of(cls, problem: Problem) -> Lattice:
        return cls(problem.grid, problem.menu, problem.nfe, problem.bits)

    def calls(self, j: int, rule: str) -> int:
        """Denoiser calls of one step of `rule` into grid level j (a step into 0 only returns D: one)."""
        return SOLVERS[rule].calls if self.grid[j] > 0 else 1

    @cached_property
    def reach(self) -> frozenset[tuple[int, int]]:
        """The (calls spent, level) pairs on some path from sigma_max that spends exactly the budget."""
        last, budget = len(self.grid) - 1, self.nfe
        forward = {(0, 0)}
        for n in range(budget):
            for i in sorted(i for m, i in forward if m == n and i < last):
                forward |= {
                    (n + c, j)
                    for j in range(i + 1, last + 1)
                    for c in {self.calls(j, rule) for rule in self.rules}
                    if n + c <= budget
                }
        finishes = {(m, j) for m, j in forward if m == budget}
        for n in range(budget - 1, -1, -1):
            for i in range(last):
                if any(
                    (n + self.calls(j, r), j) in finishes for j in range(i + 1, last + 1) for r in self.rules
                ):
                    finishes.add((n, i))
        return frozenset(forward & finishes)

    def edges(self, n: int, i: int) -> Iterator[tuple[int, str, int]]:
        """(j, rule, calls spent after the step) for every step from node (n, i) that can still finish."""
        for j in range(i + 1, len(self.grid)):
            for rule in self.rules:
                if (n + self.calls(j, rule), j) in self.reach:
                    yield j, rule, n + self.calls(j, rule)

    def dp_calls(self, cost: str) -> int:
        """The denoiser calls `dynamic_program` makes on this lattice, counted without making them."""
        sources = sorted((n, i) for n, i in self.reach if n < self.nfe)
        bits = len(self.bits)
        total = len({i for _, i in sources}) * bits if cost == "local" else 0  # the teacher's D per level
        for n, i in sources:
            variants = 1 if n == 0 else bits  # nodes (n, i, b): one per bit of the step into them
            inner = sum(SOLVERS[rule].calls - 1 for j, rule, _ in self.edges(n, i) if self.grid[j] > 0)
            total += variants * bits * (inner + (cost == "global"))
        return total


def _score(
    problem: Problem, cost: str, value: float, nxt: State, j: int, last: bool
) -> tuple[float, State | None]:
    """A node's value when `nxt` reaches grid level j, and the state to go on from (None at the end)."""
    teacher = problem.teacher.states
    if cost == "local":
        value += rmse(nxt.x, teacher[j])
        if last:
            return value + (rmse(teacher[j], teacher[-1]) if j < len(teacher) - 1 else 0.0), None
        return value, replace(nxt, x=teacher[j])
    if last:
        return problem.final_cost(nxt.x), None
    return rmse(nxt.x, teacher[j]), nxt


def dynamic_program(problem: Problem, cost: str) -> tuple[Path, float]:
    """The best path under `cost` ("local" or "global") and its value."""
    grid, teacher = problem.grid, problem.teacher.states
    lattice = Lattice.of(problem)
    if not any(n == problem.nfe for n, _ in lattice.reach):
        raise ValueError(f"no plan on a grid of {len(grid) - 1} levels spends exactly {problem.nfe} NFE")
    nodes: dict[Key, _Node] = {(0, 0, False): _Node(0.0, None, "", State(grid[0], teacher[0]))}
    at_teacher = {}  # local: the teacher's D at (level, bit), shared by every node there
    for n in range(problem.nfe):
        for key in sorted(k for k in nodes if k[0] == n):
            node, i = nodes[key], key[1]
            for on in problem.bits:
                denoise = partial(problem.denoise, **problem.read[on])
                if cost == "local":
                    if (i, on) not in at_teacher:
                        at_teacher[i, on] = denoise(teacher[i], grid[i])
                    denoised = at_teacher[i, on]
                else:
                    denoised = denoise(node.state.x, grid[i])
                for j, rule, m in lattice.edges(n, i):
                    nxt = advance(rule, node.state, denoised, grid[j], denoise, problem.steps)
                    value, state = _score(problem, cost, node.value, nxt, j, m == problem.nfe)
                    target = (m, j, on)
                    if target not in nodes or value < nodes[target].value:
                        nodes[target] = _Node(value, key, rule, state)
            node.state = None
    end = min((k for k in nodes if k[0] == problem.nfe), key=lambda k: (nodes[k].value, k))
    levels, bits, rules = [], [], []
    key = end
    while key is not None:
        levels.append(key[1])
        bits.append(key[2])
        rules.append(nodes[key].rule)
        key = nodes[key].parent
    path = Path(tuple(reversed(levels)), tuple(reversed(bits[:-1])), tuple(reversed(rules[:-1])))
    return path, nodes[end].value


def paths(problem: Problem) -> Iterator[Path]:
    """Every path from sigma_max that spends exactly the budget (exponentially many: small grids only)."""
    lattice = Lattice.of(problem)

    def extend(
        n: int, levels: tuple[int, ...], bits: tuple[bool, ...], rules: tuple[str, ...]
    ) -> Iterator[Path]:
        if n == problem.nfe:
            yield Path(levels, bits, rules)
            return
        for j, rule, m in lattice.edges(n, levels[-1]):
            for on in problem.bits:
                yield from extend(m, (*levels, j), (*bits, on), (*rules, rule))

    yield from extend(0, (0,), (), ())


def objective(problem: Problem, path: Path, cost: str) -> float:
    """The exact cost of one path: for local the sum of its steps from the teacher with the path's
    own history, for global the final cost of the plan sampled by `solvers.sample`."""
    if cost == "global":
        return problem.run(problem.sigmas(path), path.bits, path.rules).total
    grid, teacher = problem.grid, problem.teacher.states
    value, state = 0.0, State(grid[0], teacher[0])
    steps = zip(path.nodes, path.nodes[1:], path.bits, path.rules, strict=False)
    for step, (i, j, on, rule) in enumerate(steps):
        denoise = partial(problem.denoise, **problem.read[on])
        nxt = advance(rule, state, denoise(teacher[i], grid[i]), grid[j], denoise, problem.steps)
        value, state = _score(problem, cost, value, nxt, j, step == len(path.bits) - 1)
    return value


def brute_force(problem: Problem, cost: str) -> tuple[Path, float]:
    """The exact optimum of `cost` by enumeration."""
    scored = ((objective(problem, path, cost), path) for path in paths(problem))
    value, path = min(scored, key=lambda item: item[0])
    return path, value
