"""`Searched`: the discretization record of a plan the schedule search made (its settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from schedule.discretizations import Discretization, Number


@dataclass(frozen=True)
class Searched(Discretization, kind="searched", display="Searched", places=False):
    """The settings of an automated schedule search (`python -m solvers.search`, solvers/search/).

    A record, not a placement: the sigmas are the plan's own (rerunning the search is what would place
    them anew), so this kind is in `RECORDS`, which plans read back, and not in `DISCRETIZATIONS`,
    which a command line picks from.
    """

    COSTS: ClassVar[tuple[str, ...]] = ("local", "global")  # GITS's one-step cost, OSS's propagated one
    STAGES: ClassVar[tuple[str, ...]] = ("dp", "grid", "polish", "shift")  # in the order they run; dp first
    solver: str
    nfe: int
    cost: str
    grid: int  # candidate noise levels, log-uniform from sigma_max to sigma_min, then 0
    samples: int
    seed: int
    stages: tuple[str, ...]
    teacher: str  # "exact" (the model's own solution) or the solver of the fine teacher solve
    substeps: int  # teacher steps per candidate interval (0 with an exact teacher)
    option: str | None = None  # the denoiser option switched on or off per step (freeu), if any
    decoded: bool = False  # whether the final cost was measured after the VAE decode
    model: str = ""  # what was searched: the denoiser's MODULE:CALLABLE or the weights' name
    rules: tuple[str, ...] = ()  # the rules each step chose from (`solver` auto or a list); () for one

    def __post_init__(self) -> None:
        for name in ("stages", "rules"):
            if isinstance(getattr(self, name), list):  # as JSON reads it back
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        for name, low in (("nfe", 1), ("grid", 2), ("samples", 1), ("seed", 0), ("substeps", 0)):
            Number(low, integer=True)(name, getattr(self, name))
        for name in ("solver", "teacher"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.cost not in self.COSTS:
            raise ValueError(f"cost must be one of {', '.join(self.COSTS)}, got {self.cost!r}")
        self.check_stages(self.stages)
        if self.option is not None and (not isinstance(self.option, str) or not self.option):
            raise ValueError(f"option must be null or an option's name, got {self.option!r}")
        if not isinstance(self.decoded, bool):
            raise ValueError(f"decoded must be true or false, got {self.decoded!r}")
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a string, got {self.model!r}")
        if not isinstance(self.rules, tuple) or not all(isinstance(r, str) and r for r in self.rules):
            raise ValueError(f"rules must be a list of solver names, got {self.rules!r}")

    @classmethod
    def check_stages(cls, stages: Any) -> tuple[str, ...]:
        """A search's stages: dp, then any of the refinements, in the order they run."""
        if (
            not isinstance(stages, tuple)
            or not stages
            or stages[0] != "dp"
            or any(stage not in cls.STAGES for stage in stages)
            or list(stages) != sorted(set(stages), key=cls.STAGES.index)
        ):
            raise ValueError(
                f"stages must be dp, then any of grid, polish, shift in that order, got {stages!r}"
            )
        return stages

    def describe(self) -> str:
        option = f", {self.option} on/off per step" if self.option else ""
        teacher = "exact teacher" if self.teacher == "exact" else f"teacher {self.teacher} x{self.substeps}"
        rules = f" ({len(self.rules)} rules per step)" if self.rules else ""
        return (
            f"searched {self.solver}{rules} {self.nfe} NFE{option}: {self.cost} cost on {self.grid} "
            "levels + 0, "
            f"{self.samples} samples (seed {self.seed}), {teacher}, stages {'+'.join(self.stages)}"
            f"{', decoded cost' if self.decoded else ''}{f', {self.model}' if self.model else ''}"
        )
