"""Conversions from the auth service's records to protobuf messages."""

from datetime import datetime

from google.protobuf import timestamp_pb2

from auth_service.models import User
from shared.gen.auth.v1 import auth_pb2


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        create_time=timestamp(user.created_at),
    )
