"""``make_plan``, the planner's entry point: the assembled plan, plus the smallest changes that would make it
better when it does not simply fit. Pure: it reads the resolved model and the profile it is given, imports no
torch, probes no device and writes nothing."""

from __future__ import annotations

from dataclasses import replace

from mv4deploy.engines.engine import AUTO as AUTO_ENGINE
from mv4deploy.hardware.profile import HardwareProfile
from mv4deploy.model.source import ResolvedModel
from mv4deploy.plan.assemble import assemble_plan
from mv4deploy.plan.groups import Grouping
from mv4deploy.plan.plan import Plan
from mv4deploy.plan.policy import AUTO
from mv4deploy.plan.suggest import suggestions_for
from mv4deploy.plan.verdict import Verdict
from mv4deploy.plan.workload import Workload


def make_plan(resolved: ResolvedModel, profile: HardwareProfile, workload: Workload, policy: str = AUTO,
              host_mem_bytes: int | None = None, gpu_mem_util: float | None = None, suggest: bool = True,
              prefill_stream: bool | None = None, quick: bool = False, grouping: Grouping | None = None,
              engine: str = AUTO_ENGINE) -> Plan:
    """The plan; ``suggest`` False skips the suggestions (a sweep's points); the other arguments are
    ``assemble_plan``'s."""
    plan, best, grouping = assemble_plan(resolved, profile, workload, policy, host_mem_bytes, gpu_mem_util,
                                         prefill_stream=prefill_stream, quick=quick, grouping=grouping, engine=engine)
    if not suggest or plan.verdict is Verdict.FITS:
        return plan
    return replace(plan, suggestions=tuple(suggestions_for(plan, resolved, profile, workload, policy, host_mem_bytes,
                                                           gpu_mem_util, best, grouping, plan.engine.name)))
