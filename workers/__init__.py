"""One trial: data, recipes, the training engine and checkpoints (torch + `models` only).

Public API::

    train_trial(config, report, checkpoint_dir=None) -> TrialResult     (workers.trial)
    RECIPES, resolve_recipe(name, overrides, model=None) -> TrainConfig  (workers.recipes)
    load_data(config, device) -> TrialData                              (workers.data)
    python -m workers.data.files fashion-mnist                           (workers.data.files)

`workers` never imports ray, mlflow or optuna (tests/test_layering.py), so one trial runs
on a machine that has only torch. Exports are resolved lazily to keep `import workers` light.
"""

_LAZY = {"train_trial": "workers.trial", "TrialResult": "workers.trial",
         "RECIPES": "workers.recipes", "resolve_recipe": "workers.recipes"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")


__all__ = list(_LAZY)
