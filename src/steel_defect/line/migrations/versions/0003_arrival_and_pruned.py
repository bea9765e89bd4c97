"""When each frame arrived, how far each watcher lags, and the identities retention pruned.

- ``frames.arrived_at``: when the frame's file was complete in the folder (its mtime, or the
  rename that brought it in), so ``latency_ms`` runs from the camera, not from when the watcher
  noticed the file (``seen_at``, kept). Rows logged before this revision arrived when seen.
- ``watchers.lag_s``: how long the oldest complete frame not yet judged has waited.
- ``pruned``: the identity of each frame whose row retention deleted while its image stayed in
  the watched folder (no ``--archive``), so a restart finds it done instead of judging it again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("frames", sa.Column("arrived_at", sa.Float()))
    op.execute("UPDATE frames SET arrived_at = seen_at")
    op.add_column("watchers", sa.Column("lag_s", sa.Float()))
    op.create_table(
        "pruned",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("mtime_ns", sa.BigInteger(), primary_key=True, autoincrement=False),
    )


def downgrade() -> None:
    op.drop_table("pruned")
    with op.batch_alter_table("watchers") as batch:
        batch.drop_column("lag_s")
    with op.batch_alter_table("frames") as batch:
        batch.drop_column("arrived_at")
