"""Conversions from the auth service's records to protobuf messages."""

from auth_service.models import User
from shared.gen.auth.v1 import auth_pb2
from shared.timestamps import to_timestamp


def user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        create_time=to_timestamp(user.created_at),
    )
