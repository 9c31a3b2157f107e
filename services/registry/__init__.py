"""The registry service: a Kademlia DHT of encoder records over gRPC (see docs/registry.md).

``node`` runs one registry node (the ``Registry`` servicer around ``meshenc.core.kademlia``);
``settings`` is its validated configuration. Clients use ``services.common.registry_client``.
"""
