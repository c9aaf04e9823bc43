"""The worker's Faust app settings that do not need a broker."""

from __future__ import annotations

from pathlib import Path

from streams.app import build_app
from streams.settings import Settings


def test_faust_data_folder_is_under_the_state_folder(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state{x}",  # braces: Faust formats the setting with str.format
        kafka_bootstrap="127.0.0.1:1",
        clickhouse_url="clickhouse://default@127.0.0.1:1/cdrflow",
        app_id="cdrflow-test",
    )
    app = build_app(settings)
    assert Path(app.conf.datadir) == tmp_path / "state{x}" / "faust" / "cdrflow-test"
