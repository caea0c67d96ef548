"""`SyncWalletClient`: the asyncio client for code that has no event loop (a script, a WSGI
app, a worker).

It runs a `WalletClient` on a private event loop in a daemon thread and each method call
blocks until that client's coroutine has finished there. The methods, arguments, answers and
exceptions are `WalletClient`'s; `iter_*` and `watch_events` return ordinary iterators.
Threads may share one instance: their calls run concurrently on the loop. The methods are
found at run time (`__getattr__`), so a type checker sees them as `Any`: where the types
matter, use `WalletClient`.
"""

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from wallet_client.client import WalletClient

T = TypeVar("T")
_END = object()


class SyncWalletClient:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Takes `WalletClient`'s arguments."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wallet-client", daemon=True
        )
        self._thread.start()
        self._client = self._run(_create(*args, **kwargs))

    def __enter__(self) -> "SyncWalletClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channels and stops the private loop's thread."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute  # a property, such as `tokens`
        return lambda *args, **kwargs: self._blocking(self._run(_call(attribute, args, kwargs)))

    def _blocking(self, result: Any) -> Any:
        """What the caller gets for a result: async iterators become blocking ones, a client
        (`with_retry_policy`) a synchronous one on the same loop."""
        if isinstance(result, WalletClient):
            view = object.__new__(SyncWalletClient)
            view.__dict__.update(self.__dict__, _client=result)
            return view
        if hasattr(result, "__anext__"):
            return self._iterate(result)
        return result

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while (item := self._run(_next(iterator))) is not _END:
                yield item  # type: ignore[misc]  # not _END: a T
        finally:
            self._run(_close(iterator))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


async def _create(*args: Any, **kwargs: Any) -> WalletClient:
    return WalletClient(*args, **kwargs)  # grpc.aio channels are made on their loop


async def _call(function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    result = function(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def _next(iterator: AsyncIterator[T]) -> T | object:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
