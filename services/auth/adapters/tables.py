"""SQL schema of the auth database (created on start; additive changes only)."""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("created_at", sa.String(40), nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("prefix", sa.String(32), nullable=False, index=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("scope", sa.String(8), nullable=False),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=True, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40), nullable=True),
)

host_tokens = sa.Table(
    "host_tokens", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("prefix", sa.String(32), nullable=False, index=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("host_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40), nullable=True),
    sa.Column("hostname", sa.String(253), nullable=True),
    sa.Column("registered_at", sa.String(40), nullable=True),
)
