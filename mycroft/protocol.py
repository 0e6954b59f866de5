"""Protocol constants both nodes agree on: the version string, the owner's default limits and
the size of stream chunks.

One place, so the trainer's expectations and the owner's defaults cannot drift apart.
"""

from __future__ import annotations

MiB = 1024 * 1024

PROTOCOL_VERSION = "mycroft.v1"
# The largest Select request (D_hard, serialized) an owner reads unless its config says
# otherwise; Describe tells trainers the owner's own number. It arrives in CHUNK_BYTES chunks.
DEFAULT_MAX_REQUEST_BYTES = 64 * MiB
DEFAULT_MAX_REQUEST_ID_CHARS = 128  # the owner's default limit on a request id
# Rows chunks (owner -> trainer), model and Select request chunks (trainer -> owner).
CHUNK_BYTES = 1 * MiB
# One gRPC message, on both nodes. Everything large travels in chunks, so these only stop a
# peer from making the other hold a huge message: one from a trainer (a chunk, a small
# request), and one answer from an owner (Describe's feature names, a long ledger).
MAX_REQUEST_MESSAGE_BYTES = 4 * MiB
MAX_ANSWER_MESSAGE_BYTES = 16 * MiB
