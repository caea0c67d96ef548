"""datetime <-> google.protobuf.Timestamp, for both services' messages."""

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message
