# A PostgreSQL stand-in for the official image, built from Debian's package on a local base
# (make test-containers). It honours the official image's POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, PGDATA and PGPORT, and listens on 127.0.0.1 only (the test uses host networking).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY ops/containers/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
