"""Per-minute counts per line, for the dashboard's chart and tiles; filled from the frames logged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CLASSES = (1, 2, 3, 4)


def upgrade() -> None:
    op.create_table(
        "minutes",
        sa.Column("line", sa.String(128), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),
        *(sa.Column(status, sa.Integer(), nullable=False) for status in ("judged", "corrupt", "missing")),
        *(sa.Column(f"class_{c}", sa.Integer(), nullable=False) for c in CLASSES),
        *(sa.Column(f"area_{c}", sa.BigInteger(), nullable=False) for c in CLASSES),
    )
    # The counts of the frames already logged. judged_at is positive, so truncation is floor.
    minute = (
        "CAST(f.judged_at / 60 AS INTEGER)"
        if op.get_bind().dialect.name == "sqlite"
        else "CAST(floor(f.judged_at / 60) AS BIGINT)"
    )
    statuses = ", ".join(
        f"SUM(CASE WHEN f.status = '{s}' THEN 1 ELSE 0 END)" for s in ("judged", "corrupt", "missing")
    )
    present = ", ".join(
        f"SUM(CASE WHEN (f.defects & {1 << (c - 1)}) != 0 THEN 1 ELSE 0 END)" for c in CLASSES
    )
    areas = ", ".join(
        f"COALESCE(SUM((SELECT d.area FROM detections d WHERE d.frame_id = f.id AND d.class_id = {c})), 0)"
        for c in CLASSES
    )
    columns = ", ".join(
        ["line", "minute", "judged", "corrupt", "missing"]
        + [f"class_{c}" for c in CLASSES]
        + [f"area_{c}" for c in CLASSES]
    )
    op.execute(
        f"INSERT INTO minutes ({columns}) SELECT f.line, {minute}, {statuses}, {present}, {areas} "
        f"FROM frames f GROUP BY f.line, {minute}"
    )


def downgrade() -> None:
    op.drop_table("minutes")
