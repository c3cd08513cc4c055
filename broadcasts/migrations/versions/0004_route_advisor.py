"""`route_advisor`: per network, the last route (proxy Lambda, CBC target) that worked, so a send
tries it first while it is fresh (docs/behaviour.md §3). A new table; nothing else changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from broadcasts.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# A frozen copy of the provider list at this revision.
PROVIDERS = ("ee", "three", "o2", "vodafone")


def upgrade() -> None:
    op.create_table(
        "route_advisor",
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("lambda_name", sa.String(255), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            f"provider IN ({', '.join(repr(p) for p in PROVIDERS)})", name="ck_route_advisor_provider"
        ),
        sa.PrimaryKeyConstraint("provider", name="pk_route_advisor"),
    )


def downgrade() -> None:
    op.drop_table("route_advisor")
