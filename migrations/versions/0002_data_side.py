"""data side: domain shards, proximity matrices, teacher logit caches

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('proximity',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('measure', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('domains', sa.JSON(), nullable=False),
    sa.Column('matrix', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_proximity'))
    )
    op.create_table('caches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('teacher_id', sa.Integer(), nullable=False),
    sa.Column('domain_id', sa.Integer(), nullable=True),
    sa.Column('top_k', sa.Integer(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_caches_domain_id_domains'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['teacher_id'], ['models.id'], name=op.f('fk_caches_teacher_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_caches')),
    sa.UniqueConstraint('path', name=op.f('uq_caches_path'))
    )
    with op.batch_alter_table('caches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_caches_teacher_id'), ['teacher_id'], unique=False)

    op.create_table('shards',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('domain_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('n_bytes', sa.Integer(), nullable=False),
    sa.Column('n_documents', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('profile', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_shards_domain_id_domains'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shards')),
    sa.UniqueConstraint('domain_id', 'name', name=op.f('uq_shards_domain_id'))
    )
    with op.batch_alter_table('shards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shards_domain_id'), ['domain_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('shards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shards_domain_id'))

    op.drop_table('shards')
    with op.batch_alter_table('caches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_caches_teacher_id'))

    op.drop_table('caches')
    op.drop_table('proximity')
