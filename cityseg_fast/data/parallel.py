"""Map a function over tasks in a spawn-safe process pool with a rich progress bar (synth, prepare)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def run_parallel(fn: Callable, tasks: list, workers: int, progress: bool, what: str) -> list:
    """Map `fn` over `tasks` with a spawn-safe process pool (or inline for one worker), with a progress bar."""

    results = []
    with Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not progress, transient=False,
    ) as bar:
        job = bar.add_task(what, total=len(tasks))
        if workers <= 1:
            for r in map(fn, tasks):
                results.append(r)
                bar.advance(job)
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap_unordered(fn, tasks, chunksize=1):
                    results.append(r)
                    bar.advance(job)
    return results
