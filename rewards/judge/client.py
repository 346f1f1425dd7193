"""The judge's client for any OpenAI-compatible chat-completions server (``vllm serve``, SGLang, TGI, OpenAI).

Built on the ``openai`` package's ``AsyncOpenAI`` client; nothing here speaks HTTP itself.

* Concurrency: at most ``max_concurrency`` requests in flight (an ``asyncio.Semaphore`` around each request, its
  retries included).
* Timeout: ``timeout_s`` per attempt (the library's connect, write and read timeouts).
* Retries: the library's (``max_retries = retries``): after timeouts, connection errors, HTTP 408/409/429 and 5xx,
  sleeping ``backoff_s * 2**k`` (k = 0, 1, ...; capped at ``max_backoff_s``, times a random factor in [0.5, 1] so
  that concurrent failures do not retry in lockstep; a server's ``Retry-After`` wins). Other 4xx statuses (bad model
  name, context too long) and 2xx bodies that are not a chat completion fail at once: retrying cannot fix them.
* Structured output: a ``constraint`` given to the client (vLLM's ``structured_outputs`` request field, e.g.
  ``{"choice": [...]}`` or ``{"regex": ...}``) goes with every request. Under ``structured: auto`` a server that
  rejects the field (HTTP 400/422 naming it) is asked again without it, and the client stops sending it; a server
  that ignores the field is caught by the strict verdict parser. Under any other mode a rejection is an HTTP error.

Every attempt is counted in ``JudgeStats`` as it happens (``requests``, ``retries``, ``timeouts``, ``http_errors``,
``connection_errors``, ``latency_s``) by a transport that wraps the library's own, so the counts include the retries
the library makes on its own.

``chat(prompts)`` returns, in order, each reply's text or the ``JudgeRequestError`` that ended its attempts; it
never raises for a single request's failure, so the caller decides (None + counted, or an error). The ``openai``
client is made per batch inside the batch's event loop (its connection pool belongs to that loop), so ``chat`` can be
called from synchronous code, also from a thread that runs an event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai

from rewards.judge.stats import JudgeStats

T = TypeVar("T")
logger = logging.getLogger("rewards.judge")

DEFAULT_URL = "http://127.0.0.1:8000/v1"
STRUCTURED_MODES = ("auto", "choice", "regex", "off")
# The backoff's random factor comes from a generator of its own: a retry never moves the run's `random` stream.
_JITTER = random.Random()
NO_KEY = "EMPTY"  # sent as the bearer token when no api_key_env is set (the library needs one; vLLM ignores it)


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
    structured: str = "auto"
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

    def base_url(self) -> str:
        """The API base the ``openai`` client appends ``/chat/completions`` to."""
        self.endpoint()  # raises on a malformed URL
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/")
        if path.endswith("/chat/completions"):
            path = path[: -len("/chat/completions")]
        elif not path.endswith("/v1"):
            path += "/v1"
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

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


class _CountingTransport(httpx2.AsyncBaseTransport):
    """The library's transport, with each attempt (first tries and the library's retries) counted as it ends."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, stats: JudgeStats) -> None:
        self.inner = inner
        self.stats = stats

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.stats.requests += 1
        if request.headers.get("x-stainless-retry-count", "0") != "0":  # set by the library on every attempt
            self.stats.retries += 1
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx2.TimeoutException:
            self.stats.timeouts += 1
            raise
        except httpx2.TransportError:
            self.stats.connection_errors += 1
            raise
        finally:
            self.stats.latency_s += time.monotonic() - started
        if not 200 <= response.status_code < 300:
            self.stats.http_errors += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _OpenAI(openai.AsyncOpenAI):
    """``AsyncOpenAI`` with the judge's backoff (``backoff_s``, ``max_backoff_s``) instead of the library's."""

    def __init__(self, *, backoff_s: float, max_backoff_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and 0 < retry_after <= self._max_backoff_s:
            return retry_after
        done = min(options.get_max_retries(self.max_retries) - remaining_retries, 60)
        return min(self._max_backoff_s, self._backoff_s * 2**done) * _JITTER.uniform(0.5, 1.0)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost ``OSError`` under the library's wrappers (e.g. ``ConnectionRefusedError``), for messages; else
    the exception the library wrapped."""
    found, seen = error.__cause__ or error, {id(error)}
    while (error := error.__cause__ or error.__context__) is not None and id(error) not in seen:  # type: ignore[assignment]
        seen.add(id(error))
        if isinstance(error, OSError):
            found = error
    return found


def _rejects_structured_output(error: openai.APIStatusError) -> bool:
    return error.status_code in (400, 422) and "structured_outputs" in _error_text(error)


def _error_text(error: openai.APIStatusError) -> str:
    try:
        return error.response.text
    except Exception:  # a streamed or closed body
        return str(error)


class JudgeClient:
    def __init__(
        self, config: JudgeConfig, stats: JudgeStats | None = None, constraint: Mapping[str, Any] | None = None
    ) -> None:
        """``constraint``: vLLM's ``structured_outputs`` value for every request (None, or ``structured: off``:
        unconstrained)."""
        if config.structured not in STRUCTURED_MODES:
            raise ValueError(f"judge structured must be one of {STRUCTURED_MODES}, got {config.structured!r}")
        self.config = config
        self.stats = stats if stats is not None else JudgeStats()
        self.base_url = config.base_url()
        self.constraint = dict(constraint) if constraint and config.structured != "off" else None
        self.structured_supported: bool | None = None  # None: not known yet; False: the server rejected the field

    def _client(self) -> _OpenAI:
        # the pool holds one connection per request in flight (a request keeps its slot through its retries)
        limits = httpx2.Limits(
            max_connections=self.config.max_concurrency, max_keepalive_connections=self.config.max_concurrency
        )
        transport = _CountingTransport(httpx2.AsyncHTTPTransport(limits=limits), self.stats)
        return _OpenAI(
            base_url=self.base_url,
            api_key=self.config.api_key() or NO_KEY,
            timeout=self.config.timeout_s,
            max_retries=self.config.retries,
            backoff_s=self.config.backoff_s,
            max_backoff_s=self.config.max_backoff_s,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),
        )

    def _extra_body(self, constrained: bool) -> dict[str, Any]:
        body = {k: json.loads(v) for k, v in self.config.extra_body}
        if constrained and self.constraint is not None:
            body.setdefault("structured_outputs", self.constraint)  # the recipe's own extra_body wins
        return body

    async def _one(self, client: _OpenAI, prompt: str, semaphore: asyncio.Semaphore) -> str | JudgeRequestError:
        async with semaphore:
            constrained = self.structured_supported is not False
            try:
                return await self._ask(client, prompt, constrained)
            except openai.APIStatusError as exc:
                if not (constrained and self.config.structured == "auto" and _rejects_structured_output(exc)):
                    return self._status_error(exc)
                if self.structured_supported is not False:  # said once per client, not once per request
                    logger.warning(
                        "judge %s rejects vLLM's structured_outputs (HTTP %s); asking without it, so verdicts are "
                        "no longer constrained and only the strict parser checks them",
                        self.base_url,
                        exc.status_code,
                    )
                self.structured_supported = False
            except JudgeRequestError as exc:
                return exc
            try:  # the server does not know vLLM's structured output: ask without it, the strict parser decides
                return await self._ask(client, prompt, constrained=False)
            except openai.APIStatusError as exc:
                return self._status_error(exc)
            except JudgeRequestError as exc:
                return exc

    async def _ask(self, client: _OpenAI, prompt: str, constrained: bool) -> str:
        try:
            completion = await client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens,
                extra_body=self._extra_body(constrained) or None,
            )
        except openai.APITimeoutError as exc:
            raise JudgeRequestError("timeout", f"no reply within {self.config.timeout_s}s", retryable=True) from exc
        except openai.APIConnectionError as exc:
            cause = _root_cause(exc)
            raise JudgeRequestError("connection", f"{type(cause).__name__}: {cause}", retryable=True) from exc
        except openai.APIStatusError:
            raise
        except (openai.OpenAIError, ValueError, TypeError) as exc:  # a 2xx body the library cannot read
            raise self._bad(f"not a chat completion ({exc!r})") from exc
        if constrained and self.constraint is not None:
            self.structured_supported = True
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise self._bad(f"not a chat completion ({exc!r}): {str(completion)[:200]!r}") from exc
        if not isinstance(content, str):
            raise self._bad(f"message content is {content!r}")
        return content

    def _bad(self, message: str) -> JudgeRequestError:
        self.stats.bad_responses += 1
        return JudgeRequestError("bad_response", message, retryable=False)

    @staticmethod
    def _status_error(error: openai.APIStatusError) -> JudgeRequestError:
        status = error.status_code
        retryable = status in (408, 409, 429) or status >= 500
        text = _error_text(error)[:300].encode()
        return JudgeRequestError("http", f"HTTP {status}: {text!r}", retryable=retryable, status=status)

    async def achat(self, prompts: Sequence[str]) -> list[str | JudgeRequestError]:
        """Async version of ``chat``."""
        if not prompts:
            return []
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        async with self._client() as client:
            return list(await asyncio.gather(*(self._one(client, p, semaphore) for p in prompts)))

    def chat(self, prompts: Sequence[str]) -> list[str | JudgeRequestError]:
        """Send all prompts (concurrently, with retries); each result is the reply text or the final error."""
        return run_sync(self.achat(prompts))
