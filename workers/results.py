"""What a worker reports, and how a trial ends: the contract between `workers.train_trial`
(the producer) and its readers (the Tune callbacks, the progress display and the MLflow
bookkeeping in `orchestrator`, the curves read back by `analysis`). Stdlib only.

Every epoch, `train_trial` calls `report(metrics, checkpoint)` with the keys of
`EPOCH_KEYS` (in that order; val_* only with a validation split, test_* only in the
epochs the test split is evaluated). The last report (the last epoch, or the epoch that
diverged) adds `FINAL_KEYS`: the status, the parameter and MAC counts, and the probes.
The driver logs every numeric key to MLflow as a metric with step = epoch; `status` and
`probes` are no per-epoch scalars and are handled on their own (a tag and probes.json).
"""

from __future__ import annotations

# ---- per-epoch report ------------------------------------------------------------------
EPOCH = "epoch"            # 1-based epoch just finished; the MLflow step of every metric
ITERATION = "iteration"    # optimizer steps so far
# Per-epoch metrics, in report order. Errors are fractions in [0, 1]; losses are mean
# cross-entropy per image; lr is the last step's; elapsed_s counts training time only
# (resumed trials add their earlier time).
LR = "lr"
TRAIN_LOSS, TRAIN_ERROR = "train_loss", "train_error"
VAL_LOSS, VAL_ERROR = "val_loss", "val_error"
TEST_LOSS, TEST_ERROR = "test_loss", "test_error"
IMAGES_PER_S = "images_per_s"
ELAPSED_S = "elapsed_s"
EPOCH_KEYS = (EPOCH, ITERATION, LR, TRAIN_LOSS, TRAIN_ERROR, VAL_LOSS, VAL_ERROR, TEST_LOSS,
              TEST_ERROR, IMAGES_PER_S, ELAPSED_S)
# The per-epoch metrics read back as curves (everything but the step itself).
CURVE_METRICS = tuple(key for key in EPOCH_KEYS if key != EPOCH)
# Metrics a search study may optimise (`search.metric`).
OBJECTIVE_METRICS = (VAL_ERROR, VAL_LOSS, TRAIN_ERROR, TRAIN_LOSS, TEST_ERROR, TEST_LOSS)
# The error metrics, the paper's measure (degradation is defined on TRAIN_ERROR).
ERROR_METRICS = (TRAIN_ERROR, VAL_ERROR, TEST_ERROR)

# ---- the last report -------------------------------------------------------------------
STATUS = "status"          # FINISHED or DIVERGED (WORKER_STATUSES)
PARAMS = "params"          # trainable parameters of the network (a scalar metric)
MACS = "macs"              # forward multiply-accumulates per image (a scalar metric)
PROBES = "probes"          # {LAYER_RESPONSES: {layer: std}, GRADIENT_NORMS: {block: norm}}
# The probe kinds, each a mapping in network order (input -> output); also probes.json.
LAYER_RESPONSES = "layer_responses"  # std of each conv output after BN (paper Fig. 7)
GRADIENT_NORMS = "gradient_norms"    # L2 norm of each block's weight gradients
PROBE_KINDS = (LAYER_RESPONSES, GRADIENT_NORMS)
FINAL_KEYS = (STATUS, PARAMS, MACS, PROBES)
# Report keys that are not per-epoch scalars: the driver handles them on their own.
NON_METRIC_KEYS = frozenset({STATUS, PROBES})

# ---- trial statuses (MLflow tag resweep.status) ----------------------------------------
# Who sets which:
FINISHED = "finished"        # the worker: trained to the end
DIVERGED = "diverged"        # the worker: a non-finite training loss ended it early
STOPPED = "stopped"          # the driver: the trial ended without a final status (a
#                              search scheduler stopped it early)
FAILED = "failed"            # the driver: the trial raised, after Tune's retries
INTERRUPTED = "interrupted"  # the driver: the run stopped (Ctrl-C, SIGTERM, a killed
#                              driver) before the trial ended; it continues next run
RUNNING = "running"          # the driver: the trial's (or study's) run is open
WORKER_STATUSES = (FINISHED, DIVERGED)      # what a worker's last report may carry
DONE_STATUSES = (FINISHED, DIVERGED, STOPPED)  # never rerun by a later `resweep run`
END_STATUSES = (FINISHED, DIVERGED, STOPPED, FAILED)  # how a trial of one run ended
# Which of several runs of one trial_id a store's reader keeps: a done one first, then an
# interrupted attempt, then a failed one (lower rank wins; unknown statuses last).
STATUS_RANK = {FINISHED: 0, DIVERGED: 1, STOPPED: 2, INTERRUPTED: 3, FAILED: 4}


def ordered(metrics: dict) -> dict:
    """The report's keys in contract order (`EPOCH_KEYS`; readable JSON and logs)."""
    return {key: metrics[key] for key in EPOCH_KEYS if key in metrics}
