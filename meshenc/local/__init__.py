"""Embedded mode: running meshenc's processes (etcd, registry, manager, encoders) on one host.

Used by ``meshenc up``, by the integration tests and by the benchmarks, so that all of them
start, address and stop the same processes the same way.
"""
