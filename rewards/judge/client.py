"""A small client for any OpenAI-compatible ``/v1/chat/completions`` endpoint (``vllm serve``, SGLang, TGI, OpenAI).

Standard library only (no httpx/aiohttp dependency): asyncio orchestrates the batch, and each HTTP exchange runs
with ``http.client`` in a worker thread.

* Concurrency: at most ``max_concurrency`` requests in flight (an ``asyncio.Semaphore`` over a thread pool of the
  same size).
* Timeout: ``timeout_s`` bounds each attempt end to end (connect, send, wait, read). On expiry the socket is shut
  down so the worker thread is freed at once rather than lingering.
* Retries: up to ``retries`` more attempts after timeouts, connection errors, HTTP 408/429 and 5xx, sleeping
  ``backoff_s * 2**k`` (k = 0, 1, ...; capped at ``max_backoff_s``, times a random factor in [0.5, 1] so that
  concurrent failures do not retry in lockstep). Other 4xx statuses (bad model name, context too long) and 2xx
  bodies that are not a chat completion fail at once: retrying cannot fix them.

``chat(prompts)`` returns, in order, each reply's text or the ``JudgeRequestError`` that ended its attempts; it
never raises for a single request's failure, so the caller decides (None + counted, or an error).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import socket
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from rewards.judge.stats import JudgeStats

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000/v1"


class JudgeRequestError(Exception):
    """A request that failed for good. ``kind``: timeout | http | connection | bad_response."""

    def __init__(self, kind: str, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask. ``url`` may be the server root, the ``/v1`` base or the full chat-completions URL."""

    url: str = DEFAULT_URL
    model: str = ""
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_concurrency: int = 16
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 1024
    extra_body: tuple[tuple[str, str], ...] = field(default=())  # (key, JSON value) pairs: hashable

    @staticmethod
    def make(extra_body: Mapping[str, Any] | None = None, **kwargs: Any) -> JudgeConfig:
        pairs = tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in (extra_body or {}).items()))
        return JudgeConfig(extra_body=pairs, **kwargs)

    def endpoint(self) -> tuple[str, str, int, str]:
        """(scheme, host, port, path) of the chat-completions endpoint."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge url must be http(s)://host[:port][/v1], got {self.url!r}")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path if path.endswith("/v1") else path + "/v1") + "/chat/completions"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.scheme, parts.hostname, port, path

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"judge api_key_env is {self.api_key_env!r} but that environment variable is not set")
        return key


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (a notebook, an async trainer): use a private loop in a helper thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge-loop") as pool:
        return pool.submit(asyncio.run, coro).result()


class _Attempt:
    """Lets the event loop abort an attempt whose worker thread is blocked on the socket."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.aborted = False

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv(); close() alone would not
                except OSError:
                    pass


class JudgeClient:
    def __init__(self, config: JudgeConfig, stats: JudgeStats | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else JudgeStats()
        self._scheme, self._host, self._port, self._path = config.endpoint()

    # -- one HTTP exchange, in a worker thread ------------------------------------------------------------------

    def _post(self, body: bytes, headers: dict[str, str], attempt: _Attempt) -> tuple[int, bytes]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.config.timeout_s)
        try:
            conn.connect()
            with attempt.lock:
                if attempt.aborted:
                    raise TimeoutError("aborted before sending")
                attempt.sock = conn.sock
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _payload(self, prompt: str) -> bytes:
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        payload.update({k: json.loads(v) for k, v in self.config.extra_body})
        return json.dumps(payload).encode()

    @staticmethod
    def _reply_text(status: int, data: bytes) -> str:
        if status in (408, 429) or status >= 500:
            raise JudgeRequestError("http", f"HTTP {status}: {data[:200]!r}", retryable=True, status=status)
        if not 200 <= status < 300:
            raise JudgeRequestError("http", f"HTTP {status}: {data[:300]!r}", retryable=False, status=status)
        try:
            content = json.loads(data)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeRequestError(
                "bad_response", f"not a chat completion ({exc!r}): {data[:200]!r}", retryable=False
            ) from exc
        if not isinstance(content, str):
            raise JudgeRequestError("bad_response", f"message content is {content!r}", retryable=False)
        return content

    # -- orchestration ------------------------------------------------------------------------------------------

    async def _one(
        self, prompt: str, semaphore: asyncio.Semaphore, pool: ThreadPoolExecutor
    ) -> str | JudgeRequestError:
        loop = asyncio.get_running_loop()
        body = self._payload(prompt)
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        tries = 0
        while True:
            attempt = _Attempt()
            async with semaphore:
                self.stats.requests += 1
                started = time.monotonic()
                future = loop.run_in_executor(pool, self._post, body, headers, attempt)
                try:
                    status, data = await asyncio.wait_for(future, timeout=self.config.timeout_s)
                    reply: str | JudgeRequestError = self._reply_text(status, data)
                except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                    attempt.abort()
                    reply = JudgeRequestError("timeout", f"no reply within {self.config.timeout_s}s", retryable=True)
                except JudgeRequestError as exc:
                    reply = exc
                except (OSError, http.client.HTTPException) as exc:
                    reply = JudgeRequestError("connection", f"{type(exc).__name__}: {exc}", retryable=True)
                finally:
                    self.stats.latency_s += time.monotonic() - started
            if isinstance(reply, str):
                return reply
            self._count(reply)
            if not reply.retryable or tries >= self.config.retries:
                return reply
            delay = min(self.config.max_backoff_s, self.config.backoff_s * 2**tries) * random.uniform(0.5, 1.0)
            tries += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)

    def _count(self, error: JudgeRequestError) -> None:
        counter = {
            "timeout": "timeouts",
            "http": "http_errors",
            "connection": "connection_errors",
            "bad_response": "bad_responses",
        }[error.kind]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    async def achat(self, prompts: Sequence[str]) -> list[str | JudgeRequestError]:
        """Async version of ``chat``."""
        if not prompts:
            return []
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency, thread_name_prefix="judge")
        try:
            return list(await asyncio.gather(*(self._one(p, semaphore, pool) for p in prompts)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def chat(self, prompts: Sequence[str]) -> list[str | JudgeRequestError]:
        """Send all prompts (concurrently, with retries); each result is the reply text or the final error."""
        return run_sync(self.achat(prompts))
