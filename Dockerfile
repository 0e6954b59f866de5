# Two images from one file, sharing every layer up to the Python packages:
#   docker build -t mycroft .                              # `full` (the default, last stage): every
#                                                          # role, Parquet sources, the Ray backend
#   docker build --target owner -t mycroft-owner .         # what an owner runs: `mycroft owner ...`
# The owner image leaves out Ray (the trainer's optional compute backend) and the demo's
# Fashion-MNIST package; it keeps Parquet, since owners serve tables.
FROM python:3.11-slim-bookworm AS base

# The CPU-only PyTorch wheel index: the default PyPI build drags in several GB of CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# openssl for the dev certificate script.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, pinned (as constraints/torch.txt), so nothing else picks a build.
COPY constraints ./constraints
RUN pip install 'torch==2.13.0' --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY proto ./proto
COPY mycroft ./mycroft
COPY moe ./moe
COPY selection ./selection
COPY owner_node ./owner_node
COPY trainer_node ./trainer_node
COPY scripts ./scripts

# Non-root: the owner guards private data. Its state (ledger, uploaded models, cached
# embeddings) belongs in the /state volume: set `state_dir = "/state"` in the owner's config.
# A named volume starts out owned by the image's user (uid 10001); to keep the state in a
# folder of yours instead, bind-mount it and run as yourself: --user "$(id -u):$(id -g)".
RUN useradd --create-home --uid 10001 mycroft \
    && mkdir -p /state /shared \
    && chown mycroft:mycroft /state /shared
# Any uid may run the image, so nothing may need a writable home: matplotlib (the trainer's
# report charts) keeps its cache in /tmp.
ENV MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/state"]
EXPOSE 50051
ENTRYPOINT ["mycroft"]
CMD ["--help"]


FROM base AS owner
RUN pip install -c constraints/torch.txt '.[parquet]'
USER mycroft


FROM base AS full
# Fashion-MNIST (Debian's package) for the demo scenarios.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
RUN pip install -c constraints/torch.txt '.[parquet,ray]'
USER mycroft
