"""Start-up of the wallet service: pool, servicer, gRPC server."""

from shared.db import open_pool
from shared.gen.wallet.v1 import wallet_pb2_grpc
from shared.server import RunningServer, start_server
from wallet_service.config import SERVICE_NAME, WalletSettings
from wallet_service.servicer import WalletServicer


async def start(settings: WalletSettings) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="wallet",
    )
    servicer = WalletServicer()
    return await start_server(
        service_name=SERVICE_NAME,
        add_servicer=lambda server: wallet_pb2_grpc.add_WalletServiceServicer_to_server(
            servicer, server
        ),
        address=settings.address,
        pool=pool,
        health_check_interval=settings.health_check_interval_seconds,
    )
