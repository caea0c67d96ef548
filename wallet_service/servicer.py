"""The AuthService RPC handlers: they speak in domain terms and leave SQL to the repository."""

from shared.gen.wallet.v1 import wallet_pb2_grpc


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    """Every RPC answers UNIMPLEMENTED until it is built."""
