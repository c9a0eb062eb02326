# A stand-in for the official postgres:15-bookworm image, built from a local Debian base
# where no image registry is reachable (`make cluster-test`): Debian's PostgreSQL 15 with
# the part of the official image's interface docker-compose.yml uses: POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB create the database on first start, the data lives in
# /var/lib/postgresql/data, `pg_isready` is on PATH, and PGPORT sets the port.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY docker/offline/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
