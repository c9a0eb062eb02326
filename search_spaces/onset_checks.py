"""Load-time checks of a `design: onset` study's `onset:` block (the rules types cannot
state): depths valid for the block, a non-empty range, seeds.start <= seeds.max, a first
step within the budget, and no field set by hand that the design sets itself. Each
problem names the file, key path, value and what is allowed, like every study error."""

from __future__ import annotations

from models.architectures import cifar_depth_step
from search_spaces.loading import Problem, format_path
from search_spaces.onset import ONSET_FAMILIES, OnsetDesign, depths_text, valid_depths
from search_spaces.onset_budget import HOURS_UNITS, hours_key, point_hours
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
    problems += _budget_problems(spec, locations, depths)
    return problems


def _budget_problems(spec: StudySpec, locations, depths: list[int]) -> list[Problem]:
    """At least one budget; hours of the resource the trials hold (gpu_hours on a GPU
    study, cpu_hours on a CPU one); a first step within each; trials within max_trials
    (with an hours budget only: the worst case within it)."""
    o, b = spec.onset, spec.onset.budget
    where = lambda *key: (locations.where(("onset", "budget") + key),  # noqa: E731
                          format_path(("onset", "budget") + key))
    if b.trials is None and b.gpu_hours is None and b.cpu_hours is None:
        return [Problem(*where(), "got no budget; give trials, and/or gpu_hours (a GPU "
                        "study) or cpu_hours (a CPU study)")]
    gpu = spec.resources.gpu
    right = hours_key(gpu)
    wrong = "cpu_hours" if right == "gpu_hours" else "gpu_hours"
    if getattr(b, wrong) is not None:
        study = f"a GPU study (resources.gpu {gpu:g})" if gpu > 0 else \
            "a CPU study (resources.gpu 0)"
        return [Problem(*where(wrong), f"got {getattr(b, wrong):g} on {study}; its hours "
                        f"budget is {right} ({HOURS_UNITS[right]}: a trial's estimated "
                        "seconds x its share of the resource / 3600), or trials")]
    problems = []
    first = min(o.coarse, len(depths)) * o.seeds.start
    steps = f"coarse {o.coarse} x seeds.start {o.seeds.start}"
    if b.trials is not None and first > b.trials:
        problems.append(Problem(*where("trials"), f"got {b.trials}; the first step alone "
                                f"is {first} trials ({steps})"))
    if b.trials is not None and b.trials > spec.max_trials:
        problems.append(Problem(*where("trials"), f"got {b.trials}, over max_trials "
                                f"{spec.max_trials}; raise max_trials or lower the budget"))
    if getattr(b, right) is None:
        return problems
    design = OnsetDesign(o, depths, point_hours(spec, locations))
    budget = design.budget
    points = design.propose({}).points
    need = budget.hours_of(points)
    if budget.refusal((), points) is not None and need > budget.hours:
        problems.append(Problem(*where(right), f"got {budget.hours:g}; the first step "
                                f"alone is estimated at {need:.3g} {budget.unit} ({first} "
                                f"trials: {steps}; `resweep plan` shows each)"))
    elif b.trials is None and design.max_trials() > spec.max_trials:
        problems.append(Problem(*where(right), f"got {budget.hours:g}: the worst case "
                                f"within it is {design.max_trials()} trials, over "
                                f"max_trials {spec.max_trials}; add budget.trials or "
                                "raise max_trials"))
    return problems


def _allowed(family: str, block: str, every: list[int]) -> str:
    if family == "imagenet":
        return depths_text(every)
    step = cifar_depth_step(block)
    return f"{step}n+2 ({depths_text(every[:4])}, ...)"
