"""shadow scoring: a candidate's answers to live traffic beside the champion; at most one version in shadow

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('shadow_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('prediction_id', sa.String(length=32), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('shadow_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shadow_scores_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_scores_prediction_id'), ['prediction_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shadow_scores_version'), ['version'], unique=False)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index('ix_model_versions_one_shadow', ['status'], unique=True,
                              sqlite_where=sa.text("status = 'shadow'"), postgresql_where=sa.text("status = 'shadow'"))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_model_versions_one_shadow', sqlite_where=sa.text("status = 'shadow'"),
                            postgresql_where=sa.text("status = 'shadow'"))
    with op.batch_alter_table('shadow_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shadow_scores_version'))
        batch_op.drop_index(batch_op.f('ix_shadow_scores_prediction_id'))
        batch_op.drop_index(batch_op.f('ix_shadow_scores_created_at'))
    op.drop_table('shadow_scores')
