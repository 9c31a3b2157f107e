"""The wire layer: protobuf messages of ``meshenc.v1`` to and from the core's dataclasses.

``validation`` holds every rule a received message must satisfy (servers validate first),
``convert`` translates validated messages into the core's values and back (the mesh's, the
registry's and the manager's messages alike: the services build no message field by field).
"""

from meshenc.wire.convert import (
    esp_from_proto,
    esp_to_proto,
    proposal_from_proto,
    proposal_to_proto,
    vote_from_proto,
    vote_to_proto,
)
from meshenc.wire.validation import PROTOCOL_VERSION, ExchangeStreamChecker, InvalidMessage

__all__ = [
    "PROTOCOL_VERSION",
    "ExchangeStreamChecker",
    "InvalidMessage",
    "esp_from_proto",
    "esp_to_proto",
    "proposal_from_proto",
    "proposal_to_proto",
    "vote_from_proto",
    "vote_to_proto",
]
