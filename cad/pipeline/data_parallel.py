"""Data-parallel fine-tuning under torchrun: what ranks > 0 do.

``torchrun --nproc_per_node N -m cad run PIPELINE`` starts N copies of ``cad run``. Rank 0
runs the whole pipeline exactly as one process would (data stages, extraction, probe,
evaluation, report, MLflow: once). The other ranks run none of it: they wait on a control
channel for rank 0 to announce a fine-tuning job (stage settings and its input artifacts'
keys), open those artifacts from the shared store, build the same seeded model and train
beside rank 0 under DistributedDataParallel; they write nothing. When rank 0's run ends it
says so and they exit. One design, no barriers around the other stages: they simply never
run on ranks > 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cad.artifacts.summary import RunDir
from cad.distributed import World
from cad.errors import CadError
from cad.pipeline.stages.training import FinetuneSettings, FinetuneStage
from cad.pipeline.store import ArtifactStore

log = logging.getLogger("cad.pipeline")


def follow(world: World, workdir: RunDir) -> int:
    """Train every fine-tuning job rank 0 announces until its run is over; returns how many."""
    store = ArtifactStore(workdir.artifacts)
    stage = FinetuneStage()
    done = 0
    while (job := world.next_job()) is not None:
        if job.get("stage") != stage.name:
            raise CadError(f"rank {world.rank}: rank 0 announced an unknown job {job.get('stage')}")
        settings = FinetuneSettings.model_validate(job["settings"])
        inputs = {}
        for name, (kind, key) in job["inputs"].items():
            found = store.lookup(kind, key)
            if found is None:
                raise CadError(
                    f"rank {world.rank}: {kind} artifact {key} is not in {store.root}: the "
                    "workdir must be one path every rank shares (the same folder, or NFS)"
                )
            inputs[name] = stage.inputs[name].view(found)
        log.info("rank %d: fine-tuning %s r%d", world.rank, settings.backbone.name, settings.round)
        stage.follow(settings, inputs, workdir.scratch / Path(job["scratch"]).name)
        done += 1
    return done
