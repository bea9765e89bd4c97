"""The inspection log: frames, their per-class detections, watchers and alarms.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here as they were at this revision; later changes are new revisions, not edits.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("line", sa.String(128), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("judged_at", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("defects", sa.Integer(), nullable=False),
        sa.UniqueConstraint("source", "name", "size", "mtime_ns", name="frames_identity"),
        sa.CheckConstraint("status IN ('judged', 'corrupt', 'missing')", name="frames_status"),
    )
    op.create_index("frames_by_time", "frames", ["judged_at"])
    op.create_index("frames_by_line", "frames", ["line", "judged_at"])
    op.create_table(
        "detections",
        sa.Column("frame_id", BigId, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("class_id", sa.SmallInteger(), primary_key=True),
        sa.Column("judged_at", sa.Float(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("area", sa.Integer(), nullable=False),
        sa.Column("regions", sa.Integer(), nullable=False),
        sa.Column("boxes", sa.Text(), nullable=False),
        sa.Column("rle", sa.Text(), nullable=False),
    )
    op.create_index(
        "detections_present",
        "detections",
        ["class_id", "judged_at", "frame_id", "area", "probability"],
        sqlite_where=sa.text("area > 0"),
        postgresql_where=sa.text("area > 0"),
    )
    op.create_table(
        "watchers",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("line", sa.String(128), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("backlog", sa.Integer(), nullable=False),
        sa.Column("judged", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "alarms",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("line", sa.String(128), nullable=False),
        sa.Column("class_id", sa.SmallInteger(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=False),
        sa.Column("cleared_at", sa.Float()),
        sa.Column("notified", sa.Text()),
    )
    op.create_index("alarms_open", "alarms", ["line", "class_id", "cleared_at"])


def downgrade() -> None:
    for table in ("alarms", "watchers", "detections", "frames"):
        op.drop_table(table)
