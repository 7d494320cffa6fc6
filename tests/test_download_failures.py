"""Downloads that fail in part, odd tokens and narrower allow_patterns, also through `doit`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_doit

sys.path.insert(0, str(Path(__file__).parent))
import test_download  # noqa: E402
from hub_server import HubServer  # noqa: E402
from test_download import (  # noqa: E402
    CHUNK,
    REPO,
    big_tar,
    hub_rows,
    make_tar,
    meta,
    partials,
    shard_path,
)

from sample.generate import write_config  # noqa: E402
from tasks.download import DownloadError, PartialDownloadError, download_shards  # noqa: E402

# test_download's fixtures, found by pytest under these names
isolated_hf = test_download.isolated_hf
hub = test_download.hub
root = test_download.root


def four_shards(hub: HubServer) -> None:
    for i in (2, 3):
        hub.add_file(shard_path(i), make_tar(i))


def test_a_failing_shard_does_not_stop_the_others(hub: HubServer, root: Path) -> None:
    four_shards(hub)
    hub.fail_next(shard_path(1), 500)
    hub.fail_next(shard_path(2), 404)
    with pytest.raises(PartialDownloadError) as err:
        download_shards(root, REPO)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 files could not be fetched:"
    assert lines[1].startswith(f"{shard_path(1)}: ") and "HTTP 500" in lines[1]
    assert lines[1].endswith("rerun to resume") and "partial data kept" not in lines[1]
    assert lines[2].startswith(f"{shard_path(2)}: not found at main ({hub.head[:12]})")
    assert lines[2].endswith("check revision and allow_patterns")
    assert "rerun" not in lines[2]
    summary = err.value.summary
    assert summary.new == [shard_path(0), shard_path(3)]  # fetched past the failures
    assert [f.path for f in summary.failed] == [shard_path(1), shard_path(2)]
    for i in (0, 3):
        assert (root / "hub" / shard_path(i)).read_bytes() == hub.files()[shard_path(i)]
    assert set(hub_rows(root)) == {shard_path(0), shard_path(3)}
    assert meta(root, "hub_commit") is None  # the run did not complete
    assert partials(root) == []

    again = download_shards(root, REPO)  # the faults were one-off: a rerun fetches the two
    assert again.new == [shard_path(1), shard_path(2)] and again.skipped == 2
    assert hub.gets[shard_path(0)] == 1 and hub.gets[shard_path(3)] == 1
    assert meta(root, "hub_commit") == hub.head


def test_one_failure_is_one_line_and_the_summary_still_prints(
    hub: HubServer, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.fail_next(shard_path(0), 403)
    with pytest.raises(PartialDownloadError) as err:
        download_shards(root, REPO)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{shard_path(0)}: ")
    assert "HTTP 403" in message and "HF_TOKEN" in message and "rerun" not in message
    out = capsys.readouterr().out
    assert out.count("fetched 1 new shard ") == 1
    assert f"1 could not be fetched: {shard_path(0)}" in out


def test_partial_data_kept_is_said_only_when_a_partial_file_exists(
    hub: HubServer, root: Path
) -> None:
    hub.add_file(shard_path(3), big_tar(3))
    hub.drop_next(shard_path(3), after_bytes=CHUNK + 4096)
    hub.fail_next(shard_path(3), 503)  # huggingface_hub's own retry fails too
    hub.fail_next(shard_path(1), 503)  # no byte of this one arrives
    with pytest.raises(PartialDownloadError) as err:
        download_shards(root, REPO)
    by_path = {f.path: f.reason for f in err.value.summary.failed}
    assert set(by_path) == {shard_path(1), shard_path(3)}
    assert "partial data kept: 10.49 MB of" in by_path[shard_path(3)]
    assert "rerun to resume" in by_path[shard_path(3)]
    assert "partial data kept" not in by_path[shard_path(1)]
    assert by_path[shard_path(1)].endswith("rerun to resume")
    [part] = partials(root)
    assert part.stat().st_size == CHUNK
    assert (root / "hub" / shard_path(0)).exists()

    summary = download_shards(root, REPO)
    assert sorted(summary.new) == [shard_path(1), shard_path(3)]
    assert partials(root) == []


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
def test_a_non_ascii_token_is_one_line(
    hub: HubServer, root: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "hf_abc\u200bdef")  # a zero-width space pasted along
    with pytest.raises(DownloadError) as err:
        download_shards(root, REPO)
    message = str(err.value)
    assert message.startswith(f"{variable} contains a non-ASCII character: '\\u200b' (U+200B)")
    assert "\n" not in message and "hf_abc" not in message  # the token itself is not shown
    assert hub.requests == []


def test_a_non_ascii_token_given_as_argument(hub: HubServer, root: Path) -> None:
    with pytest.raises(DownloadError, match="the token given contains a non-ASCII character"):
        download_shards(root, REPO, token="hf_é")


def test_a_file_outside_narrower_patterns_is_named_not_gone(
    hub: HubServer, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download_shards(root, REPO)
    capsys.readouterr()
    summary = download_shards(root, REPO, allow_patterns=[shard_path(0)])
    assert summary.outside_patterns == [shard_path(1)] and summary.gone_upstream == []
    line = capsys.readouterr().out
    assert f"1 recorded outside allow_patterns ['{shard_path(0)}']" in line
    assert line.rstrip().endswith(shard_path(1)) and "no longer upstream" not in line

    files = hub.files()
    del files[shard_path(1)]
    hub.set_files(files)
    summary = download_shards(root, REPO)
    assert summary.gone_upstream == [shard_path(1)] and summary.outside_patterns == []
    line = capsys.readouterr().out
    assert f"1 recorded no longer upstream (kept): {shard_path(1)}" in line
    assert (root / "hub" / shard_path(1)).exists()


# --- through the real `doit download` -----------------------------------------------------


def test_doit_download_prints_its_summary_once(hub: HubServer, root: Path) -> None:
    write_config(root, repo_id=REPO)
    proc = run_doit(root, "download")
    assert proc.stdout.count("fetched 2 new shards") == 1, proc.stdout
    assert proc.stdout.count("fetched ") == 1
    proc = run_doit(root, "download")
    assert proc.stdout.count("2 up to date") == 1, proc.stdout


def test_doit_download_with_a_failing_shard_exits_1_naming_it(hub: HubServer, root: Path) -> None:
    write_config(root, repo_id=REPO)
    four_shards(hub)
    hub.fail_next(shard_path(2), 404)
    proc = run_doit(root, "download", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("fetched 3 new shards") == 1, proc.stdout
    assert f"{shard_path(2)}: not found at main" in proc.stderr
    assert "Traceback" not in proc.stderr
    for i in (0, 1, 3):
        assert (root / "hub" / shard_path(i)).is_file()
    proc = run_doit(root, "download")
    assert "fetched 1 new shard " in proc.stdout


def test_a_file_missing_at_the_revision_is_named_with_what_to_check(
    hub: HubServer, root: Path
) -> None:
    """The Hub says 404 EntryNotFound to the metadata request that comes before a GET."""
    four_shards(hub)
    hub.fail_next_head(shard_path(1), 404)
    hub.fail_next_head(shard_path(2), 502, times=5)
    with pytest.raises(PartialDownloadError) as err:
        download_shards(root, REPO, revision=hub.head)
    by_path = {f.path: f.reason for f in err.value.summary.failed}
    assert by_path[shard_path(1)].startswith(f"{shard_path(1)}: not found at {hub.head} (")
    assert by_path[shard_path(1)].endswith("check revision and allow_patterns")
    assert "HTTP 502" in by_path[shard_path(2)]
    assert by_path[shard_path(2)].endswith("rerun to resume")
    assert err.value.summary.new == [shard_path(0), shard_path(3)]
    assert hub.gets[shard_path(1)] == 0
