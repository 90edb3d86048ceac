"""feedback.corrected_at: when a source that does not measure first labelled the prediction

A prediction has one feedback row, replaced by each new label; this keeps what the row's newest label and
source no longer show: that a correction labelled it once, and so may have trained a model.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feedback') as batch:
        batch.add_column(sa.Column('corrected_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('feedback') as batch:
        batch.drop_column('corrected_at')
