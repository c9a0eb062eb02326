"""The paper's depth claims decided by a `design: onset` study's own result.

An onset study chose its trials by the design's sequential rule (`search_spaces.onset`:
each explored depth against the shallowest by a one-sided Welch test, more seeds where
undecided, the residual twins at the bracketing depths). Its claims table reads that
result, not a fresh all-pairs test over the same trials, so the verdict is the one the
decisions were taken on:

- degradation: supported when the design found a degraded depth (the bracket's deeper
  end, or any depth it judged degraded before the budget ran out), not supported when it
  stopped on "no degradation", not testable while it is unfinished;
- the fix: the residual twins' verdict at the bracket (`TwinVerdict.fixed`);
- deeper residual nets: the twins' second test (residual at the deeper bracket end no
  worse than at the shallower one).

Each claim's evidence ends with the report's all-pairs onset test (Holm-adjusted) over the
same trials as a cross-check, so a reader sees when the two rules disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.cells import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED
from analysis.claims import Claim
from search_spaces.onset import (BUDGET, DEGRADED, NO_DEGRADATION, OnsetDesign, Replay,
                                 TwinVerdict)

# Claim keys the design decides (`Claim.key`; the others keep the generic rules).
DESIGN_CLAIMS = ("degradation", "fix", "deeper_residual")


@dataclass(frozen=True)
class DesignResult:
    """An onset study's design and its decisions replayed over the store's trials."""

    design: OnsetDesign
    state: Replay

    def rule(self) -> str:
        spec = self.design.spec
        return (f"the onset design's rule (search_spaces/onset.py): one-sided Welch t-test of "
                f"each explored depth against depth {self.design.reference} at alpha "
                f"{spec.alpha:g}, not degraded when the {100 * (1 - spec.alpha):g}% upper "
                f"bound is below the {100 * spec.margin:g} pp margin, more seeds (up to "
                f"{spec.seeds.max}) where undecided; p-values not adjusted for the several "
                f"depths compared; replayed from the stored trials")


def design_claims(result: DesignResult, generic: dict[str, Claim]) -> dict[str, Claim]:
    """The claims `DESIGN_CLAIMS` decided by the design; `generic` (key -> claim by the
    all-pairs rules) supplies the wording and the cross-check."""
    final, twins = result.state.final, None
    if final is not None:
        twins = final.residual
    return {"degradation": _degradation(result, generic["degradation"]),
            "fix": _fix(result, twins, generic["fix"]),
            "deeper_residual": _deeper(result, twins, generic["deeper_residual"])}


def _degradation(result: DesignResult, generic: Claim) -> Claim:
    final = result.state.final
    if final is None:
        return _claim(generic, NOT_TESTABLE, _unfinished(result), result.rule())
    degraded = [v for v in final.verdicts if v.verdict == DEGRADED]
    if final.bracket:
        lo, hi = final.bracket
        deciding = [v.describe() for v in final.verdicts if v.depth == hi]
        evidence = [f"onset bracketed between depth {lo} (not degraded) and depth {hi} "
                    f"(degraded)" + "".join(f": {d}" for d in deciding[:1])
                    + _stopped_early(final)]
    elif degraded:
        evidence = ["degraded: " + "; ".join(v.describe() for v in degraded)
                    + _stopped_early(final)]
    else:
        verdict = NOT_SUPPORTED if final.stop == NO_DEGRADATION else NOT_TESTABLE
        return _claim(generic, verdict, f"the design stopped ({final.stop}): {final.reason}",
                      result.rule())
    return _claim(generic, SUPPORTED, " | ".join(evidence), result.rule())


def _fix(result: DesignResult, twins: TwinVerdict | None, generic: Claim) -> Claim:
    if twins is None or twins.gain is None:
        return _claim(generic, NOT_TESTABLE, _no_twins(result), "-")
    return _claim(generic, SUPPORTED if twins.fixed else NOT_SUPPORTED, twins.describe(),
                  f"residual twins at the bracket {twins.bracket[0]}-{twins.bracket[1]}: "
                  f"plain > residual at depth {twins.bracket[1]} by a one-sided Welch test at "
                  f"alpha {result.design.spec.alpha:g}, and residual {twins.bracket[1]} not "
                  f"significantly worse than residual {twins.bracket[0]}")


def _deeper(result: DesignResult, twins: TwinVerdict | None, generic: Claim) -> Claim:
    if twins is None or twins.worse is None:
        return _claim(generic, NOT_TESTABLE, _no_twins(result), "-")
    lo, hi = twins.bracket
    w = twins.worse
    p = f", p = {w.p_value:.2g}" if w.p_value is not None else ""
    evidence = (f"residual {hi} minus residual {lo}: {100 * w.diff:+.2f} pp training error"
                f"{p}")
    return _claim(generic, NOT_SUPPORTED if w.greater else SUPPORTED, evidence,
                  f"one-sided Welch t-test (residual {hi} > residual {lo}) at alpha "
                  f"{result.design.spec.alpha:g}, the twins of the onset design's bracket")


def _claim(generic: Claim, verdict: str, evidence: str, test: str) -> Claim:
    """`generic`'s claim with the design's verdict, and the all-pairs rule's verdict as a
    cross-check at the end of the evidence."""
    check = (f"cross-check, all-pairs rule over the same trials: {generic.verdict}"
             + (f" ({generic.test})" if generic.test != "-" else ""))
    return Claim(generic.claim, generic.source, verdict, f"{evidence} | {check}",
                 test, generic.key)


def _stopped_early(final) -> str:
    return (f" (the {final.stop} stop came before the bracket was resolved)"
            if final.stop == BUDGET else "")


def _unfinished(result: DesignResult) -> str:
    state = result.state
    return (f"the design is not finished: step {len(state.trace)} ({state.pending.action}) "
            f"lacks {len(state.missing)} trials; rerun the study to continue")


def _no_twins(result: DesignResult) -> str:
    final = result.state.final
    if final is None:
        return _unfinished(result)
    if not result.design.spec.residual_check:
        return "residual_check is off: the design ran no residual twins"
    return f"no finished residual twins: the design stopped ({final.stop}) before them"
