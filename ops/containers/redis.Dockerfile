# A Redis stand-in for the official image, from Debian's package on a local base.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN mkdir -p /data
WORKDIR /data
CMD ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--dir", "/data"]
