"""Where a graph's backbone chains run: in this process, or as Ray tasks on a cluster.

The data stages always run here, once. With Ray, each backbone's chain (extract -> probe ->
finetune -> evaluate, every round) is one Ray task that rebuilds the same graph from a
picklable factory, runs its own nodes with a :class:`Runner` on the shared workdir and
returns the artifact keys; the driver then reads those artifacts from the store. Content
keys make a retried task safe: a task killed mid-stage leaves only a temporary directory
(never an artifact that counts), and Ray's retry reuses every stage it finished.

Ray is the engine (never a home-made scheduler); it is imported only when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cad.artifacts.base import Artifact
from cad.artifacts.summary import RunDir, StageRecord
from cad.errors import CadError
from cad.pipeline.graph import ChainNodes, Graph, Node
from cad.pipeline.runner import Runner
from cad.ray_session import ray_session

log = logging.getLogger("cad.pipeline")

EXECUTORS = ("local", "ray")
GraphFactory = Callable[[], Graph]


@dataclass(frozen=True)
class RayOptions:
    """Resources per chain task and where the cluster is (None: start a local instance)."""

    address: str | None = None
    cpus_per_chain: float = 1.0
    gpus_per_chain: float = 0.0
    max_retries: int = 2


def run_graph(
    graph: Graph,
    runner: Runner,
    executor: str = "local",
    factory: GraphFactory | None = None,
    ray: RayOptions | None = None,
) -> dict[Node, Artifact]:
    """Run every node of ``graph``; chains on ``executor``. ``factory`` rebuilds the same
    graph in a worker (needed for Ray)."""
    if executor == "local":
        return runner.run(graph)
    if executor != "ray":
        raise CadError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    if factory is None:
        raise CadError("the ray executor needs a graph factory to rebuild the graph in workers")
    in_chains = {id(n) for c in graph.chains for n in c.nodes}
    for node in graph:
        if id(node) not in in_chains:
            runner.run_node(node)  # the data stages, once, here
    by_backbone: dict[str, list[ChainNodes]] = {}
    for chain in graph.chains:
        by_backbone.setdefault(chain.chain.backbone, []).append(chain)
    outcomes = _on_ray(factory, runner, by_backbone, ray or RayOptions())
    labels = {node.label: node for node in graph}
    for records in outcomes:
        for record in records:
            node = labels[record.label]
            found = runner.store.lookup(node.stage.name, record.key)
            if found is None:  # a task reported an artifact that is not in the store
                raise CadError(
                    f"{record.label}: artifact {record.key} is missing from {runner.store.root}; "
                    "the workdir must be a folder every Ray node shares"
                )
            runner.results[node] = node.stage.output.view(found)
            runner.records.append(record)
    return runner.results


def run_chain_nodes(
    factory: GraphFactory, workdir: str, backbone: str, force: list[str], redone: list[str]
) -> list[StageRecord]:
    """What one Ray task does: rebuild the graph, run the chains of ``backbone`` (their data
    inputs are already finished, so they are reused) and report what happened."""
    graph = factory()
    # No secret here: only the data stages pseudonymise, and they ran in the driver. Reading
    # one would create a stray .cad_secret when the driver's came from CAD_SECRET.
    runner = Runner(RunDir(workdir), b"", force, redone)
    chain_nodes = [c for c in graph.chains if c.chain.backbone == backbone]
    for chain in chain_nodes:
        runner.run_node(chain.evaluate)
    mine = {id(n) for c in chain_nodes for n in c.nodes}
    labels = {n.label for n in graph if id(n) in mine}
    return [r for r in runner.records if r.label in labels]


def _on_ray(
    factory: GraphFactory,
    runner: Runner,
    by_backbone: dict[str, list[ChainNodes]],
    options: RayOptions,
) -> list[list[StageRecord]]:
    with ray_session(options.address) as ray:
        task = ray.remote(
            num_cpus=options.cpus_per_chain,
            num_gpus=options.gpus_per_chain,
            max_retries=options.max_retries,
            retry_exceptions=False,  # a bug is not retried; a dead worker is
        )(run_chain_nodes)
        workdir = str(runner.workdir.root.resolve())
        force, redone = sorted(runner.force), sorted(runner.redone)
        pending = {
            backbone: task.remote(factory, workdir, backbone, force, redone)
            for backbone in by_backbone
        }
        log.info("ray: %d chain task(s) submitted", len(pending))
        results = []
        for backbone, ref in pending.items():
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:  # the chain's own error, e.g. weights
                if isinstance(exc.cause, CadError):
                    raise type(exc.cause)(f"{backbone}: {exc.cause}") from None
                raise
        return results
