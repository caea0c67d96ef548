"""Start-up of the auth service: pool, servicer, gRPC server."""

from auth_service.config import SERVICE_NAME, AuthSettings
from auth_service.servicer import AuthServicer
from shared.db import open_pool
from shared.gen.auth.v1 import auth_pb2_grpc
from shared.server import RunningServer, start_server


async def start(settings: AuthSettings) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="auth",
    )
    servicer = AuthServicer()
    return await start_server(
        service_name=SERVICE_NAME,
        add_servicer=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
            servicer, server
        ),
        address=settings.address,
        pool=pool,
        health_check_interval=settings.health_check_interval_seconds,
    )
