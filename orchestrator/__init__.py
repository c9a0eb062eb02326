"""The `resweep` command line, Ray Tune assembly and MLflow tracking.

Importing this package is cheap: Ray, MLflow and Optuna are imported only by the
commands that need them, so `resweep train` runs on a box with torch alone.
"""

__version__ = "0.1.0"
