"""Protocol constants both nodes agree on: the version string, the owner's default limits and
the size of stream chunks.

One place, so the trainer's expectations and the owner's defaults cannot drift apart.
"""

from __future__ import annotations

MiB = 1024 * 1024

PROTOCOL_VERSION = "mycroft.v1"
DEFAULT_MAX_REQUEST_BYTES = 64 * MiB  # one gRPC message, the owner's default limit
DEFAULT_MAX_REQUEST_ID_CHARS = 128  # the owner's default limit on a request id
# Rows chunks (owner -> trainer) and model chunks (trainer -> owner): well below gRPC's 4 MiB
# default message limit, so neither side needs a raised limit for streams.
CHUNK_BYTES = 1 * MiB
