"""output names reserved by running jobs; runs record their owner process

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reservations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('job', sa.String(length=32), nullable=False),
        sa.Column('owner_pid', sa.Integer(), nullable=False),
        sa.Column('owner_host', sa.String(length=255), nullable=False),
        sa.Column('owner_started', sa.BigInteger(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reservations')),
        sa.UniqueConstraint('kind', 'name', name=op.f('uq_reservations_kind')),
    )
    # ADD/DROP COLUMN in place (SQLite >= 3.35), as in 0006.
    with op.batch_alter_table('runs', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('owner_pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('owner_host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('owner_started', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('owner_started')
        batch_op.drop_column('owner_host')
        batch_op.drop_column('owner_pid')
    op.drop_table('reservations')
