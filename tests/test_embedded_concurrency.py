"""The embedded key manager under real concurrency: many processes opening one fresh store at once."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

from castellan import key_manager
from castellan.common.objects import opaque_data
from oslo_config import cfg
from oslo_context import context as oslo_context

PROCESSES = 16
#: Fresh stores each process writes into, in step with the others (more by hand: IMGSIGN_CONCURRENCY_ROUNDS).
ROUNDS = int(os.environ.get("IMGSIGN_CONCURRENCY_ROUNDS", "12"))


def _manager(config_file: Path) -> Any:
    conf = cfg.ConfigOpts()
    conf(args=[], project="imgsign-test", default_config_files=[str(config_file)])
    return key_manager.API(conf)


def _config(root: Path, round_: int) -> Path:
    config_file = root / f"castellan-{round_}.conf"
    store = root / f"round-{round_}" / "keystore.sqlite3"
    config_file.write_text(f"[key_manager]\nbackend = imgsign\n[imgsign_embedded]\npath = {store}\n")
    return config_file


def _worker(root: Path, worker: int, barrier: Any, results: Any) -> None:
    """In every round, wait for all the others, then store one object into that round's fresh store."""
    context = oslo_context.RequestContext(project_id="project-a")
    managers = [_manager(root / f"castellan-{r}.conf") for r in range(ROUNDS)]  # nothing opens a store yet
    for round_, manager in enumerate(managers):
        barrier.wait(timeout=60)
        value = f"worker-{worker}-round-{round_}".encode()
        try:
            results.put((round_, manager.store(context, opaque_data.OpaqueData(value)), value, None))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            results.put((round_, None, value, f"{type(exc).__name__}: {exc}"))


def test_processes_storing_into_fresh_stores_at_once(tmp_path):
    for round_ in range(ROUNDS):
        _config(tmp_path, round_)
    fork = multiprocessing.get_context("fork")  # castellan is imported once, in the parent
    barrier = fork.Barrier(PROCESSES)
    results = fork.Queue()
    workers = [fork.Process(target=_worker, args=(tmp_path, n, barrier, results)) for n in range(PROCESSES)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    for worker in workers:
        worker.join(timeout=60)
    failures = sorted({error for *_, error in outcomes if error})
    assert not failures, f"{sum(1 for *_, e in outcomes if e)} of {len(outcomes)} stores failed: {failures}"
    context = oslo_context.RequestContext(project_id="project-a")
    for round_ in range(ROUNDS):
        stored = {object_id: value for r, object_id, value, _ in outcomes if r == round_}
        listed = _manager(tmp_path / f"castellan-{round_}.conf").list(context, object_type=opaque_data.OpaqueData)
        assert {o.id: o.get_encoded() for o in listed} == stored
        assert len(stored) == PROCESSES
