"""`resweep plan STUDY`: the trials a study would run and an estimate of their cost."""

from __future__ import annotations

HELP = "show the trials a study expands to and what they would cost (runs nothing)"
DESCRIPTION = """\
Load and check a study file, expand it into trials and print one row per trial:
name, trial_id, the varied parameters, parameters, MACs (multiply-accumulates for one
image), optimizer steps, estimated time and device share; then totals: trials,
CPU- or GPU-hours, and the wall time at the study's concurrency. Nothing is trained.

How the time is estimated: a trial trains (iterations x batch) images at about 3x the
network's forward MACs each (forward + backward) and evaluates its validation split every
epoch and its test split every train.eval_every epochs at 1x; the sum is divided by a
throughput in MACs per second, plus 5 s of start-up. The throughput is measured on this
machine, once per torch thread count, by timing a few training steps of a small ResNet
(depth 20, width 0.5, 28x28, batch 128) and cached in ~/.cache/resweep/calibration.json
($RESWEEP_CACHE_DIR moves it; --recalibrate measures again). GPU studies on a machine
without a GPU use a reference H200 throughput, and a GPU shared by 1/gpu trials gives each
the measured share of packing (4 trials: 0.7x of a lone trial each). Wall time assumes
Ray starts a pending trial as soon as a slot frees: slots = CPUs / resources.cpu (or
GPUs / resources.gpu), capped by search.max_concurrent.

GPU studies also show each trial's estimated GPU memory (parameters, gradients, momentum,
activations from a meta-device forward at the batch size and precision, the data set held
on the GPU, CUDA context) and whether the 1/gpu trials that share a GPU fit in it
(--gpu-memory, or this machine's GPU).
"""

EXAMPLES = """\
examples:
  resweep plan search_spaces/degradation.yaml
  resweep plan search_spaces/degradation-quick.yaml --set train.epochs=2 --json
  resweep plan search_spaces/degradation-quick.yaml --set space.depth=[20,56,110]
  resweep plan search_spaces/width.yaml --gpus 8 --gpu-memory 80
"""


def add_arguments(parser) -> None:
    from orchestrator.arg_types import add_set_option, positive_float, positive_int

    parser.add_argument("study", metavar="STUDY", help="a study file (search_spaces/*.yaml)")
    add_set_option(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the plan as JSON (trials, one a line, with their full "
                             "config; totals; cost model)")
    parser.add_argument("--cpus", type=positive_int, default=None, metavar="N",
                        help="CPUs to plan for (default: this machine's)")
    parser.add_argument("--gpus", type=positive_int, default=None, metavar="N",
                        help="GPUs to plan for (default: this machine's, or 1 if none)")
    parser.add_argument("--gpu-memory", type=positive_float, default=None, metavar="GIB",
                        help="GPU memory to check packed trials against (default: this "
                             "machine's first GPU; none: estimates only)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure this machine's throughput again")


def main(args) -> int:
    from search_spaces import load_study
    from search_spaces.plan import format_json, format_table, plan_study

    study = load_study(args.study, args.overrides)
    gpu_memory = int(args.gpu_memory * 2**30) if args.gpu_memory else None
    plan = plan_study(study, cpus=args.cpus, gpus=args.gpus,
                      refresh_calibration=args.recalibrate, gpu_memory_bytes=gpu_memory)
    if args.json:
        print(format_json(plan))
    else:
        print(format_table(plan))
    return 0
