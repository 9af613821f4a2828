"""`cookbook bench` (`make bench`): what durability costs here, side by side with a peer.

One run, five measurements, written to `bench-results/` as a markdown table and a PNG chart:

1. Durable step overhead: a workflow of N no-op durable steps through the embedded dev server
   (a real server process and a real worker process, HTTP+SSE, fsync on), the SDK's in-process
   local mode, DBOS with its SQLite system database, and plain Python function calls. Rounds are
   interleaved (round 1 of every backend, then round 2, ...) so a noisy machine hurts all alike.
2. Recovery: a worker is SIGKILLed mid-step; how long until a fresh worker runs the next step,
   for lease ttls of 1, 2 and 5 s and for the dev server's fast test mode.
3. Crash-matrix throughput: crash points per minute over the saga example's matrix.
4. The physical floor: one fsync'd append to a file (what the dev server's log does per
   record) and one fsync'd SQLite WAL commit, on the same disk.
5. History: finished 3-step workflows run by the SDK (100 in flight) up to 1,000 and 10,000
   (`ARGS="--only history --history 100000"` for more); at each size the dev server is
   SIGKILLed, and its restart time (start to listening, next to a start on an empty data
   directory), RSS, data directory and a spot check of old workflows (each promise by id) are
   measured, with the steps/s of each stretch.

A benchmark, not a test: it prints what it measured and never fails on a number. Each backend
runs in a child process of its own (`python -m cookbook.bench _steps ...`), so one backend's
imports, threads or `sqlite3` substitution cannot leak into another's figures.

The modules: `workloads` (the workflows the children run), `child` (the children's entry point),
one module per measurement (`steps`, `recovery`, `matrix`, `floor`, `history`), `report` (the
markdown), `chart` (the PNG), `stats` (percentiles, milliseconds) and `cli` (the command).
"""

from cookbook.bench.cli import SECTIONS, add_arguments, command, run

__all__ = ["SECTIONS", "add_arguments", "command", "run"]
