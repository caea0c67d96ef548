"""Asserting on failed calls: status code plus the ErrorInfo's domain and reason."""

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from shared.errors import error_info


async def expect_status(
    code: grpc.StatusCode, domain: str, reason: str, awaitable: Awaitable[Any]
) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and an ErrorInfo of `domain` and `reason`."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    error = raised.value
    assert error.code() == code, error.details()
    info = error_info(error)
    assert info is not None, "no google.rpc.ErrorInfo in the status"
    assert (info.domain, info.reason) == (domain, reason)
    return error
