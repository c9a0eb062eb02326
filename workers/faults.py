"""Test-only fault cues: make a trial pause, or its process die, at a known epoch.

Fault tests (tests/orchestrator/) kill drivers and workers at a known point of a trial
instead of inside a polling window. $RESWEEP_TEST_FAULTS names a folder; for a trial
named NAME, a test writes into it:

    NAME.pause  holding N   after reporting epoch N the trial writes its process id to
                            NAME.paused and waits until NAME.pause is removed (then it
                            removes NAME.paused and goes on)
    NAME.die    holding N   when the trial is about to train epoch N (so also right after
                            resuming from epoch N-1's checkpoint), its process appends its
                            id to NAME.died and exits at once with status 70, as a crash
                            (no cleanup, no report); every try that gets there dies again,
                            until NAME.die is removed

Unset (always, outside tests) it costs one environment lookup per trial.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from models.config import ConfigError

FAULTS_ENV = "RESWEEP_TEST_FAULTS"
DIE_EXIT_STATUS = 70


class FaultCues:
    """The cue files of one trial in the $RESWEEP_TEST_FAULTS folder."""

    def __init__(self, folder: Path, trial_name: str):
        self.folder, self.name = Path(folder), trial_name

    @classmethod
    def from_env(cls, trial_name: str) -> "FaultCues | None":
        folder = os.environ.get(FAULTS_ENV)
        return cls(Path(folder), trial_name) if folder else None

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}.{suffix}"

    def _epoch(self, suffix: str) -> int | None:
        """N from NAME.SUFFIX, or None when there is no such cue."""
        try:
            text = self.path(suffix).read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"${FAULTS_ENV} (test-only): {self.path(suffix)}: expected an "
                              f"epoch number >= 1, got {text!r}")
        return int(text)

    def before_epoch(self, epoch: int) -> None:
        """Die here when NAME.die says `epoch`."""
        if self._epoch("die") == epoch:
            with open(self.path("died"), "a") as deaths:
                deaths.write(f"{os.getpid()}\n")
            os._exit(DIE_EXIT_STATUS)

    def after_report(self, epoch: int) -> None:
        """Wait here while NAME.pause says `epoch`."""
        if self._epoch("pause") != epoch:
            return
        paused = self.path("paused")
        paused.write_text(f"{os.getpid()}\n")
        while self.path("pause").exists():
            time.sleep(0.1)
        paused.unlink(missing_ok=True)
