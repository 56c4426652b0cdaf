"""Data-parallel preprocessing: N worker processes (ranks), each on its own device.

The issue allows "Lightning predict with DDP, or equivalent"; this is the equivalent,
without Lightning (``emoedit/`` never imports it) and without a process group, because
the ranks share nothing but the file system:

- the parent reads the inputs, checks every cache's spec once (so a mismatch fails before
  any process starts), drops the clips every cache already holds (resume), and splits the
  rest into ``workers`` shares balanced by file size (a cheap proxy of the frame count:
  greedy longest-first assignment to the least-loaded rank, deterministic);
- ``torch.multiprocessing.spawn`` starts the ranks; rank ``r`` runs on ``devices[r % n]``
  or ``cuda:(r % n_gpu)`` when CUDA is present (else the CPU), writes with
  ``CacheWriter.open(root, spec, rank=r, world_size=N)`` (its own shard and fragment
  folders), shows a tqdm bar at ``position=r``, and leaves its counters in a file;
- after every rank has joined (the barrier), the parent finalises each cache as rank 0
  (:func:`emoedit.data.preprocess.run_preprocess`).

With ``workers=1`` the single rank runs in the calling process (no spawn).
"""

from __future__ import annotations

import heapq
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from emoedit.atomic_io import atomic_write_text
from emoedit.data.cache_writer import CacheWriter
from emoedit.data.datasets import ClipSource
from emoedit.face_model.morphable_model import MorphableModel

STATS_DIR = ".preprocess-ranks"  # hidden folder of <output_dir> where spawned ranks leave their counters


def balance_clips(clips: Sequence[ClipSource], world_size: int) -> list[list[ClipSource]]:
    """Split clips into ``world_size`` shares of about equal total file size (deterministic).

    Largest clip first, each to the share with the least total so far (ties: lowest rank);
    each share keeps clip-id order. Returns one list per rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(clips)), key=lambda i: (-max(clips[i].size_bytes, 1), clips[i].clip_id))
    heap = [(0, rank) for rank in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in order:
        load, rank = heapq.heappop(heap)
        shares[rank].append(index)
        heapq.heappush(heap, (load + max(clips[index].size_bytes, 1), rank))
    return [[clips[i] for i in sorted(share, key=lambda i: clips[i].clip_id)] for share in shares]


def pending_clips(plan: Any) -> tuple[list[ClipSource], int]:
    """(clips some cache of the stage still lacks, number of clips every cache already holds).

    Opens every cache once as rank 0 (creating it if needed): a spec mismatch with an
    existing cache raises here, before any worker starts.
    """
    writers = [CacheWriter.open(plan.cache_dirs[kind], spec, rank=0, world_size=1)
               for kind, spec in plan.specs.items()]
    pending = [clip for clip in plan.clips if not all(w.is_done(clip.clip_id) for w in writers)]
    return pending, len(plan.clips) - len(pending)


def run_rank(plan: Any, model: MorphableModel, clips: Sequence[ClipSource], *, rank: int, world_size: int) -> Any:
    """Process ``clips`` as rank ``rank`` of ``world_size``; returns its :class:`RankStats`."""
    from tqdm import tqdm

    from emoedit.data.preprocess import ClipProcessor, default_device

    config = plan.config
    device = default_device(rank, config.devices)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    processor = ClipProcessor(plan, model, rank=rank, world_size=world_size, device=device)
    bar = tqdm(total=len(clips), position=rank, desc=f"{config.stage} rank {rank}", unit="clip",
               disable=not config.progress, leave=world_size == 1, dynamic_ncols=True)
    try:
        for clip in clips:
            outcome = processor.process(clip)
            bar.update(1)
            bar.set_postfix_str(f"{outcome} {clip.clip_id}"[-48:], refresh=False)
        processor.flush()
    finally:
        bar.close()
    return processor.stats


def _stats_file(plan: Any, rank: int) -> Path:
    return Path(plan.config.output_dir) / STATS_DIR / f"rank-{rank:04d}.json"


def _spawned_rank(rank: int, world_size: int, plan: Any, model: MorphableModel,
                  shares: list[list[ClipSource]]) -> None:
    """Entry point of a spawned rank (module level so that spawn can import it).

    The counters go to a file, not a pipe: a large result cannot block the child while the
    parent waits in ``join``.
    """
    threads = plan.config.torch_threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    stats = run_rank(plan, model, shares[rank], rank=rank, world_size=world_size)
    atomic_write_text(_stats_file(plan, rank), json.dumps(stats.to_json()))


def run_ranks(plan: Any, model: MorphableModel) -> tuple[list[Any], int]:
    """Run every rank over its share of the pending clips.

    Returns the ranks' stats (rank order) and the number of ranks that ran (1 when nothing
    was pending or ``workers == 1``; the caller finalises with that world size).
    """
    from emoedit.data.preprocess import RankStats

    config = plan.config
    pending, already_done = pending_clips(plan)
    world_size = config.workers if pending else 1
    shares = balance_clips(pending, world_size)
    if world_size == 1:
        previous_threads = torch.get_num_threads()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        try:
            stats = [run_rank(plan, model, shares[0], rank=0, world_size=1)]
        finally:
            torch.set_num_threads(previous_threads)
    else:
        for rank in range(world_size):
            _stats_file(plan, rank).unlink(missing_ok=True)
        torch.multiprocessing.spawn(_spawned_rank, args=(world_size, plan, model, shares),
                                    nprocs=world_size, join=True, start_method="spawn")
        stats = []
        for rank in range(world_size):
            path = _stats_file(plan, rank)
            stats.append(RankStats.from_json(json.loads(path.read_text(encoding="utf-8"))))
            path.unlink()
    stats[0].clips_already_done += already_done
    return stats, world_size
