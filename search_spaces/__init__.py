"""Study files: the typed schema, strict YAML loading, expansion into trials.

Public API::

    load_study(path, overrides=()) -> Study        # raises StudyError listing every problem
    expand_study(study) -> list[TrialConfig]       # grid and ablation designs
    search_space(study) -> {key: distribution}     # search designs (see search.py)
    trial_from_params(study, params, seed) -> TrialConfig

Imports pydantic, yaml, models and workers; never ray, mlflow or optuna.
"""

from search_spaces.loading import Problem, StudyError
from search_spaces.search import InfeasibleParams, search_space, trial_from_params
from search_spaces.study import Study, expand_study, load_study, load_study_text

__all__ = ["InfeasibleParams", "Problem", "Study", "StudyError", "expand_study",
           "load_study", "load_study_text", "search_space", "trial_from_params"]
