"""models record their Hugging Face Hub id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hub_id', sa.String(length=200), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35), not a batch rebuild of models,
    # which would drop the graph-version triggers of 0004.
    with op.batch_alter_table('models', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('hub_id')
