"""evaluations record their protocol (blocks, block size, sample digest); models their kv heads

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


# ADD/DROP COLUMN in place (SQLite >= 3.35 does both): recreating the models table, batch
# mode's fallback, would drop the graph_version triggers that revision 0004 put on it.
# Existing rows keep NULL: evaluations of an unknown protocol, models of unknown kv heads.
def upgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('n_blocks', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('block_size', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sample_digest', sa.String(length=64), nullable=True))
    with op.batch_alter_table('models', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('kv_heads', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('kv_heads')
    with op.batch_alter_table('evaluations', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('sample_digest')
        batch_op.drop_column('block_size')
        batch_op.drop_column('n_blocks')
