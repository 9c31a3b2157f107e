"""The benchmarks: one module each, behind the ``meshenc bench`` commands.

In the simulator: :mod:`~meshenc.bench.strategies` (``sim``, ``lockin``, ``wan``: the resync
strategies compared on seeded worlds, :mod:`~meshenc.bench.worlds`), :mod:`~meshenc.bench.dht`
(the registry's DHT under churn, simulated by :mod:`meshenc.sim.dht`),
:mod:`~meshenc.bench.simspeed` (how fast the simulator itself runs) and
:mod:`~meshenc.bench.plan` (the manager's planner). On this machine: :mod:`~meshenc.bench.encoder`
and :mod:`~meshenc.bench.ingest` (the encoder's frame and ingest paths against ``ffmpeg``),
:mod:`~meshenc.bench.failover` and :mod:`~meshenc.bench.live` (real encoder processes, started
through :mod:`meshenc.local`), :mod:`~meshenc.bench.esp` (the mesh links' ESP path in a full
mesh of node processes, :mod:`~meshenc.bench.esp_node`, against a baseline revision). What
they share is :mod:`~meshenc.bench.results`.

Each module measures and returns a result with its JSON document and its table; the command
line only parses options and prints. The package sits above :mod:`meshenc.local` (failover and
live start real processes through it) and below the command line; nothing below imports it.
"""
