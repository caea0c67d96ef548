"""The AuthService RPC handlers: they speak in domain terms and leave SQL to the repository."""

from shared.gen.auth.v1 import auth_pb2_grpc


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Every RPC answers UNIMPLEMENTED until it is built."""
