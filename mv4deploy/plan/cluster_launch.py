"""Launch configs for a cluster plan: one command per node for vLLM and SGLang, and a Dynamo deployment.

- vLLM: DP-attention + EP uses vLLM's native data parallel (``--data-parallel-size`` over all ranks,
  ``--data-parallel-size-local`` per node, ``--data-parallel-address`` / ``--data-parallel-rpc-port`` of the
  first node, ``--data-parallel-start-rank`` and ``--headless`` on the others, ``--enable-expert-parallel``);
  TP + PP across nodes runs on a Ray cluster (``ray start`` per node, ``vllm serve`` on the head with
  ``--distributed-executor-backend ray``). Disaggregated workers carry a NIXL ``--kv-transfer-config``.
- SGLang: one ``sglang.launch_server`` per node with ``--nnodes``, ``--node-rank``, ``--dist-init-addr``;
  ``--tp-size`` is the instance's GPUs per stage, ``--dp-size`` with ``--enable-dp-attention`` the attention DP,
  ``--ep-size`` with ``--moe-a2a-backend deepep``; disaggregated workers ``--disaggregation-mode``.
- Dynamo: a ``DynamoGraphDeployment`` (nvidia.com/v1alpha1) with a Frontend and one service per worker kind,
  ``multinode.nodeCount`` and GPUs per node, running ``python3 -m dynamo.sglang`` with the SGLang flags; the
  keys follow ai-dynamo/dynamo's recipes (tests/data/dynamo_dgd_keys.txt names the file and commit).

An instance smaller than a node shares it with others: each gets ``CUDA_VISIBLE_DEVICES`` and its own port.
Addresses are placeholders (``NODE0`` is the first node of the instance).
"""

from __future__ import annotations

PORT, RPC_PORT, DIST_PORT, BOOTSTRAP_PORT, RAY_PORT = 8000, 13345, 5000, 30001, 6379
NIXL = '\'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''
DYNAMO_IMAGE = "nvcr.io/nvidia/ai-dynamo/sglang-runtime:0.7.0"


def _instances(worker: dict, gpus_per_node: int, first_gpu: int) -> list[list[tuple[int, list[int]]]]:
    """Per instance of a worker kind: its (node, GPU indices) slots, GPUs counted from ``first_gpu``."""
    out, per_instance = [], worker["gpus"]
    for i in range(worker["workers"]):
        start, slots = first_gpu + i * per_instance, []
        for g in range(start, start + per_instance):
            node, local = divmod(g, gpus_per_node)
            if not slots or slots[-1][0] != node:
                slots.append((node, []))
            slots[-1][1].append(local)
        out.append(slots)
    return out


def _env(local: list[int], gpus_per_node: int) -> str:
    return "" if len(local) == gpus_per_node else f"CUDA_VISIBLE_DEVICES={','.join(map(str, local))} "


def _vllm(model: str, worker: dict, slots, gpus_per_node: int, port: int, context: int) -> list[tuple[int, str]]:
    """(node, command) per node of one instance (a Ray cluster: ``ray start`` per node, then the head serves)."""
    tp, dp, pp = worker["tp"], worker["dp"], worker["pp"]
    base = f"vllm serve {model} --max-model-len {context} --port {port}"
    if worker["role"] != "both":
        base += f" --kv-transfer-config {NIXL}"
    head = f"NODE{slots[0][0]}"
    if pp > 1 and len(slots) > 1:      # TP within a node, PP across nodes: a Ray cluster
        ep = " --enable-expert-parallel" if worker["ep"] > 1 else ""
        lines = [(slots[0][0], f"ray start --head --port {RAY_PORT}")]
        lines += [(n, f"ray start --address {head}:{RAY_PORT}") for n, _ in slots[1:]]
        return lines + [(slots[0][0], f"{base} --tensor-parallel-size {tp} --pipeline-parallel-size {pp}{ep} "
                                      f"--distributed-executor-backend ray")]
    ranks_per_node = [max(1, len(local) // (tp * pp)) for _, local in slots]
    lines, start = [], 0
    for (node, local), ranks in zip(slots, ranks_per_node):
        args = [base, f"--tensor-parallel-size {tp}"] + ([f"--pipeline-parallel-size {pp}"] if pp > 1 else [])
        if dp > 1:
            args += [f"--data-parallel-size {dp}", f"--data-parallel-size-local {ranks}",
                     f"--data-parallel-address {head}", f"--data-parallel-rpc-port {RPC_PORT}"]
            args += [f"--data-parallel-start-rank {start}", "--headless"] if start else []
        if worker["ep"] > 1:
            args.append("--enable-expert-parallel")
        lines.append((node, f"{_env(local, gpus_per_node)}{' '.join(args)}"))
        start += ranks
    return lines


def _sglang_args(model: str, worker: dict, context: int) -> list[str]:
    args = ["--model-path", model, "--context-length", str(context), "--tp-size", str(worker["tp"] * worker["dp"])]
    if worker["dp"] > 1:
        args += ["--dp-size", str(worker["dp"]), "--enable-dp-attention"]
    if worker["ep"] > 1:
        args += ["--ep-size", str(worker["ep"]), "--moe-a2a-backend", "deepep"]
    if worker["pp"] > 1:
        args += ["--pp-size", str(worker["pp"])]
    if worker["role"] != "both":
        args += ["--disaggregation-mode", worker["role"], "--disaggregation-bootstrap-port", str(BOOTSTRAP_PORT)]
    return args


def _sglang(model: str, worker: dict, slots, gpus_per_node: int, port: int, context: int) -> list[tuple[int, str]]:
    args = _sglang_args(model, worker, context) + ["--port", str(port)]
    if len(slots) > 1:
        args += ["--nnodes", str(len(slots)), "--dist-init-addr", f"NODE{slots[0][0]}:{DIST_PORT}"]
    lines = []
    for rank, (node, local) in enumerate(slots):
        extra = ["--node-rank", str(rank)] if len(slots) > 1 else []
        lines.append((node, f"{_env(local, gpus_per_node)}python -m sglang.launch_server {' '.join(args + extra)}"))
    return lines


def launch_commands(cluster_json: dict, model: str, gpus_per_node: int, context: int) -> dict:
    """``{"vllm": [{node, command}], "sglang": [...], "dynamo": YAML text}`` for the chosen option."""
    workers = list(cluster_json.get("workers") or [])
    out = {"vllm": [], "sglang": []}
    first = 0
    for kind, worker in enumerate(workers):
        for i, slots in enumerate(_instances(worker, gpus_per_node, first)):
            port = PORT + 10 * kind + i
            for engine, make in (("vllm", _vllm), ("sglang", _sglang)):
                for node, line in make(model, worker, slots, gpus_per_node, port, context):
                    out[engine].append({"node": node, "role": worker["role"], "instance": i, "command": line})
        first += worker["workers"] * worker["gpus"]
    out["dynamo"] = dynamo_yaml(workers, model, gpus_per_node, context)
    return out


def dynamo_yaml(workers: list[dict], model: str, gpus_per_node: int, context: int) -> str:
    """A DynamoGraphDeployment with a Frontend and one SGLang service per worker kind."""
    import yaml
    name = "mv4deploy-" + ("disagg" if len(workers) > 1 else "agg")
    services = {"Frontend": {"dynamoNamespace": name, "componentType": "frontend", "replicas": 1,
                             "extraPodSpec": {"mainContainer": {"image": DYNAMO_IMAGE}}}}
    for w in workers:
        args = _sglang_args(model, w, context) + ["--host", "0.0.0.0"]
        nodes = max(1, -(-w["gpus"] // gpus_per_node))
        service = {"dynamoNamespace": name, "componentType": "worker", "replicas": w["workers"],
                   "resources": {"limits": {"gpu": str(min(w["gpus"], gpus_per_node))}},
                   "extraPodSpec": {"mainContainer": {"image": DYNAMO_IMAGE, "command": ["python3", "-m", "dynamo.sglang"],
                                                      "args": args}}}
        if nodes > 1:
            service["multinode"] = {"nodeCount": nodes}
        services[w["role"] if w["role"] != "both" else "worker"] = service
    doc = {"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeployment", "metadata": {"name": name},
           "spec": {"services": services}}
    return yaml.safe_dump(doc, sort_keys=False)
