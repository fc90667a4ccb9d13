"""models record their files' sha256, size and mtime (weights checksummed at registration)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


# ADD/DROP COLUMN in place (SQLite >= 3.35 does both): recreating the table, batch mode's
# fallback, would drop the graph_version triggers that revision 0004 put on models.
def upgrade() -> None:
    with op.batch_alter_table('models', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('files', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('files')
