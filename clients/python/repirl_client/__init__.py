"""repirl-client: the Python SDK of the repirl PRM service.

    from repirl_client import Client
    client = Client()                      # REPIRL_BASE_URL / REPIRL_API_KEY, or base_url= / api_key=
    client.score(question=..., steps=[...])
    client.rerank(question=..., candidates=[...], voting="weighted")
    client.search(question=..., strategy="beam", n=8, beam_width=4, stream=True)  # typed step events

Drop-in reward functions: `repirl_client.adapters` (TRL, OpenRLHF, veRL, search-and-learn).
"""

from repirl_client._base import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, NOT_GIVEN
from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import (APIConnectionError, APIError, APIResponseValidationError, APIStatusError,
                                       APITimeoutError, AuthenticationError, BadRequestError, ConflictError,
                                       InternalServerError, NotFoundError, PermissionDeniedError, RateLimitError,
                                       RepirlError, RequestTooLargeError, UnprocessableEntityError)
from repirl_client._streaming import AsyncChatStream, AsyncSearchStream, ChatStream, SearchStream
from repirl_client._version import __version__
from repirl_client import types

__all__ = [
    "Client", "AsyncClient", "types", "__version__", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "NOT_GIVEN",
    "SearchStream", "AsyncSearchStream", "ChatStream", "AsyncChatStream",
    "RepirlError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError", "APIResponseValidationError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "RequestTooLargeError", "UnprocessableEntityError", "RateLimitError", "InternalServerError",
]
