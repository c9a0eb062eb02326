"""Load-time checks of a `design: onset` study's `onset:` block (the rules types cannot
state): depths valid for the block, a non-empty range, seeds.start <= seeds.max, a first
step within the budget, and no field set by hand that the design sets itself. Each
problem names the file, key path, value and what is allowed, like every study error."""

from __future__ import annotations

from models.architectures import cifar_depth_step
from search_spaces.loading import Problem, format_path
from search_spaces.onset import ONSET_FAMILIES, depths_text, valid_depths
from search_spaces.schema import StudySpec


def onset_problems(spec: StudySpec, locations) -> list[Problem]:
    """What makes an `onset:` block unusable: depths not valid for the block, an empty
    range, seeds.start > seeds.max, a first step over the budget, fields the design sets."""
    problems: list[Problem] = []

    def add(path: tuple, message: str) -> None:
        problems.append(Problem(locations.where(path), format_path(path), message))

    o, model = spec.onset, spec.model
    family, block = model.family or "cifar", model.block or "basic"
    if family not in ONSET_FAMILIES:
        add(("model", "family"), f"got {family!r}; design onset searches depths of "
            f"{' or '.join(ONSET_FAMILIES)} nets")
        return problems
    for name in ("depth", "residual"):
        if getattr(model, name) is not None:
            add(("model", name), f"got {getattr(model, name)!r}; design onset sets "
                f"model.{name} itself (remove it; the range is onset.depth)")
    for name in ("repeats", "seeds"):
        if name in spec.model_fields_set:
            add((name,), f"got {getattr(spec, name)!r}; design onset sets the seeds itself "
                "(use onset.seeds: {start, max})")
    every = valid_depths(family, block, 1, 1202)
    for end in ("low", "high"):
        depth = getattr(o.depth, end)
        if depth not in every:
            add(("onset", "depth", end), f"got {depth}; a {block} {family} net needs a "
                f"depth in {_allowed(family, block, every)}")
    if o.depth.low >= o.depth.high:
        add(("onset", "depth"), f"got low {o.depth.low} >= high {o.depth.high}; "
            "`low < high` must hold")
    if o.seeds.start > o.seeds.max:
        add(("onset", "seeds"), f"got start {o.seeds.start} > max {o.seeds.max}; "
            "`start <= max` must hold")
    if problems:
        return problems
    depths = valid_depths(family, block, o.depth.low, o.depth.high)
    if o.coarse > len(depths):
        add(("onset", "coarse"), f"got {o.coarse}; {o.depth.low}..{o.depth.high} has "
            f"{len(depths)} valid depths ({depths_text(depths)}): at most {len(depths)}")
    if o.resolution >= len(depths) - 1 and len(depths) > 2:
        add(("onset", "resolution"), f"got {o.resolution}; with {len(depths)} valid depths "
            f"it must be below {len(depths) - 1} to leave anything to bisect")
    first = min(o.coarse, len(depths)) * o.seeds.start
    if first > o.budget.trials:
        add(("onset", "budget", "trials"), f"got {o.budget.trials}; the first step alone "
            f"is {first} trials (coarse {o.coarse} x seeds.start {o.seeds.start})")
    if o.budget.trials > spec.max_trials:
        add(("onset", "budget", "trials"), f"got {o.budget.trials}, over max_trials "
            f"{spec.max_trials}; raise max_trials or lower the budget")
    return problems


def _allowed(family: str, block: str, every: list[int]) -> str:
    if family == "imagenet":
        return depths_text(every)
    step = cifar_depth_step(block)
    return f"{step}n+2 ({depths_text(every[:4])}, ...)"
