"""Which phase each running trial is in, so that a trial cancelled for running out of time
is recorded with where it hung ("timeout after 600 s in phase prune").

`TrialPhases` runs as a small Ray actor without CPUs on the coordinator's node; a trial
posts each phase as it enters it (a fire-and-forget call that costs the trial nothing),
and the coordinator asks for a trial's phase when it cancels it.
"""
from __future__ import annotations


class TrialPhases:
    def __init__(self) -> None:
        self._phases: dict[str, str] = {}

    def enter(self, key: str, phase: str) -> None:
        self._phases[key] = phase

    def phase(self, key: str) -> str | None:
        """The phase the trial `key` last entered, or None if it never started."""
        return self._phases.get(key)

    def forget(self, key: str) -> None:
        self._phases.pop(key, None)
