"""``make_plan``, the planner's entry point: the assembled plan, plus the smallest changes that would make it
better when it does not simply fit. Pure: it reads the resolved model and the profile it is given, imports no
torch, probes no device and writes nothing."""

from __future__ import annotations

from dataclasses import replace

from mv4deploy.engines.engine import AUTO as AUTO_ENGINE, load_engine
from mv4deploy.hardware.profile import HardwareProfile
from mv4deploy.model.source import ResolvedModel
from mv4deploy.plan.assemble import assemble_plan
from mv4deploy.plan.cluster import Serving, plan_cluster
from mv4deploy.plan.cluster_launch import launch_commands
from mv4deploy.plan.gates import machine_gates
from mv4deploy.plan.policy import resolve_policy
from mv4deploy.plan.tiers import build_machine
from mv4deploy.plan.groups import Grouping
from mv4deploy.plan.plan import Plan
from mv4deploy.plan.policy import AUTO
from mv4deploy.plan.suggest import suggestions_for
from mv4deploy.plan.verdict import Verdict
from mv4deploy.plan.workload import Workload


def make_plan(resolved: ResolvedModel, profile: HardwareProfile, workload: Workload, policy: str = AUTO,
              host_mem_bytes: int | None = None, gpu_mem_util: float | None = None, suggest: bool = True,
              prefill_stream: bool | None = None, quick: bool = False, grouping: Grouping | None = None,
              engine: str = AUTO_ENGINE, serving: Serving | None = None) -> Plan:
    """The plan; ``suggest`` False skips the suggestions (a sweep's points); ``serving``: the served workload of
    a cluster plan (made on a profile with ``nodes > 1``, or on any multi-GPU profile when given); the other
    arguments are ``assemble_plan``'s."""
    plan, best, grouping = assemble_plan(resolved, profile, workload, policy, host_mem_bytes, gpu_mem_util,
                                         prefill_stream=prefill_stream, quick=quick, grouping=grouping, engine=engine)
    if profile.gpus is not None and (profile.nodes > 1 or serving is not None):
        plan = with_cluster(plan, resolved, profile, serving or Serving(), grouping, policy, host_mem_bytes,
                            gpu_mem_util, engine)
    if not suggest or plan.verdict is Verdict.FITS:
        return plan
    return replace(plan, suggestions=tuple(suggestions_for(plan, resolved, profile, workload, policy, host_mem_bytes,
                                                           gpu_mem_util, best, grouping, plan.engine.name)))


CLUSTER_ENGINES = ("sglang", "vllm")     # the engines with multi-node layouts and launch lines, preferred first


def with_cluster(plan: Plan, resolved: ResolvedModel, profile: HardwareProfile, serving: Serving, grouping, policy: str,
                 host_mem_bytes, gpu_mem_util, engine: str) -> Plan:
    """The plan with its ``cluster`` section: the layout search over every node (``plan.cluster``) with the
    engine named (vLLM or SGLang) or the first of ``CLUSTER_ENGINES`` the hardware admits, and its launch lines."""
    arch = resolved.spec.architecture.value
    names = [engine] if engine in CLUSTER_ENGINES else list(CLUSTER_ENGINES)
    admitted = [n for n in names if not machine_gates(load_engine(n), profile, arch)]
    notes = [] if profile.nodes == 1 else [f"{profile.name} is a cluster of {profile.nodes} nodes: the placement above "
                                           f"is one node's ({profile.gpus.count} GPUs); the cluster section plans all"]
    if not admitted:
        return replace(plan, warnings=plan.warnings + tuple(notes) + (
            f"no cluster plan: {', '.join(names)} cannot serve {arch} on {profile.gpus.model}",))
    machine = build_machine(profile, host_mem_bytes, gpu_mem_util, load_engine(admitted[0]))
    chosen_policy = resolve_policy(policy, machine.device_kind, resolved.spec.architecture)
    cluster = plan_cluster(resolved, profile, serving, grouping, machine, chosen_policy)
    if cluster.chosen is not None:
        model = resolved.source if resolved.kind != "preset" else f"/path/to/{resolved.spec.name}"
        context = serving.input_tokens + serving.output_tokens
        cluster = replace(cluster, commands=launch_commands(cluster.to_json(), model, profile.gpus.count, context))
    return replace(plan, cluster=cluster, warnings=plan.warnings + tuple(notes))
