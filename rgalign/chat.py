"""An OpenAI-compatible ``/chat/completions`` client with timeouts, retries (5xx, 429, network) and a fail-fast
reachability check; shared by the Stage-2 teacher (``alignment.teachers.OpenAITeacher``) and the intent-hit
judge (``rgalign.judge``). Works with GPT-class APIs, vLLM, and KServe's OpenAI routes."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


class EndpointUnreachable(RuntimeError):
    pass


class ChatClient:
    """``base_url`` like ``http://host:8000/v1``; the key is read from the environment variable
    ``api_key_env`` (never from a file in the repo)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 30.0,
                 retries: int = 2, concurrency: int = 8, max_tokens: int = 64, temperature: float = 0.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.key = model, os.environ.get(api_key_env, "")
        self.timeout_s, self.retries, self.concurrency = timeout_s, retries, concurrency
        self.max_tokens, self.temperature = max_tokens, temperature
        self.failures = Counter()

    def complete(self, messages: list[dict]) -> str | None:
        """The reply text, or None after the retries (the reason is counted in ``failures``)."""
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                           "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        last = None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, body, headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code < 500 and e.code != 429:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = type(getattr(e, "reason", e)).__name__
            except (KeyError, IndexError, ValueError):
                last = "malformed response"
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
        self.failures[last] += 1
        return None

    def complete_many(self, conversations: list[list[dict]]) -> list[str | None]:
        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(self.complete, conversations))

    def check(self, who: str, setting: str) -> None:
        """Fail fast with a clear message when the endpoint cannot be reached at all."""
        try:
            urllib.request.urlopen(urllib.request.Request(self.url.replace("/chat/completions", "/models")),
                                   timeout=self.timeout_s)
        except urllib.error.HTTPError:
            return  # reachable (it answered)
        except (urllib.error.URLError, OSError) as e:
            raise EndpointUnreachable(f"{who}: {self.url} is unreachable ({e}); check {setting} and that the "
                                      "server is running") from None
