"""What every meshenc service shares: the gRPC server shell and the matching channel options."""

from services.common.grpc_server import (
    CHANNEL_OPTIONS,
    SERVER_OPTIONS,
    GrpcServer,
    insecure_channel,
)

__all__ = ["CHANNEL_OPTIONS", "SERVER_OPTIONS", "GrpcServer", "insecure_channel"]
