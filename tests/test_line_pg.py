"""The inspection log on a real PostgreSQL server, started by the fixture (slow suite).

The fixture runs Debian's ``initdb`` and ``pg_ctl`` on a Unix socket in a temporary folder (no
TCP port), as the ``postgres`` user when the tests run as root (the server refuses root). The
same checks as on SQLite run here, each on a database of its own. Skips with the reason when the
server binaries are absent, unless ``STEEL_DEFECT_PG=required`` (then it fails).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from steel_defect.line.log import InspectionLog, LogError, Search
from tests import test_line

pytestmark = pytest.mark.slow


def _binaries() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(Path(folder, b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@pytest.fixture(scope="module")
def pg_server():
    """(socket folder, run-as prefix) of a server running for this module."""
    binaries = _binaries()
    if binaries is None:
        if os.environ.get("STEEL_DEFECT_PG") == "required":
            pytest.fail("STEEL_DEFECT_PG=required but no initdb/pg_ctl (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="steel-defect-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, socket_dir = root / "data", root
    run = lambda *args: subprocess.run([*prefix, *args], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off"
    run(
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "server.log"),
        "-w",
        "start",
    )
    try:
        yield socket_dir, run
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """A fresh database on the server, as a SQLAlchemy URL."""
    import psycopg

    socket_dir, _ = pg_server
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    with psycopg.connect(
        host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={socket_dir}"


@pytest.fixture
def inspection(pg_url):
    log = InspectionLog.open(pg_url)
    yield log
    log.close()


def test_the_migrated_schema_on_postgresql_is_the_one_the_queries_use(inspection, pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    assert inspection.engine.dialect.name == "postgresql" and inspection.revision() == "0003"
    with inspection.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), test_line.metadata) == []
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
        connection.commit()
    with pytest.raises(LogError, match="newer steel-defect"):
        InspectionLog.open(pg_url)
    assert "@" in inspection.name and "password" not in inspection.name


def test_records_are_kept_once_on_postgresql(inspection):
    test_line.test_a_frame_recorded_twice_keeps_one_row(inspection)


def test_search_on_postgresql(inspection):
    test_line.test_search_filters_by_class_area_probability_time_line_and_pages(inspection)


def test_rates_and_aggregates_on_postgresql(inspection):
    test_line.test_rates_and_aggregates_count_what_was_recorded(inspection)


def test_retention_on_postgresql(inspection):
    test_line.test_retention_drops_the_oldest_rows_and_their_detections(inspection)


def test_the_watcher_writes_to_postgresql(inspection, tmp_path):
    from steel_defect.inference.pipeline import build_predictor
    from steel_defect.inference.run import predict_rows
    from steel_defect.line.watch import Watcher

    checkpoint = test_line.random_checkpoints(tmp_path / "model", seg_prior=0.6, exported=True)["seg"]
    predictor = build_predictor(None, [checkpoint], untuned=True)
    folder = tmp_path / "in"
    names = test_line.frames_in(folder, 5)
    assert Watcher(folder, inspection, predictor, settle_s=0.0, events=False).run(idle_exit_s=0.0).judged == 5
    rows = {r["name"]: r for r in inspection.search(Search())}
    expected, _ = predict_rows(predictor, folder, names, progress=False)
    assert {n: [c["rle"] for c in rows[n]["classes"]] for n in names} == expected
    assert inspection.watchers()[0]["state"] == "stopped"
