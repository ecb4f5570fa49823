"""`scripts/publish.py`: the Hub upload (against a stand-in for huggingface_hub's HfApi), tag checks, the README's zoo
table."""
import sys
from pathlib import Path

import pytest

import timm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
import publish  # noqa: E402

TAG = publish.shipped_tags()[0]


class _RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls, and what the folder held when it was uploaded."""
    calls = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, exist_ok=False):
        self.calls.append(('create_repo', self.token, repo_id, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(('upload_folder', self.token, repo_id, folder_path, files, commit_message))


@pytest.fixture
def recording_hf_api(monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'HfApi', _RecordingHfApi)
    monkeypatch.setattr(_RecordingHfApi, 'calls', [])
    return _RecordingHfApi


def test_push_creates_and_uploads_the_repo_named_in_the_pretrained_cfg(tmp_path, recording_hf_api):
    cards, hub = tmp_path / 'cards', tmp_path / 'hub'
    assert publish.main([TAG, '--push', '--token', 'hf_test', '--cards-dir', str(cards), '--hub-dir', str(hub)]) == 0
    repo_id = timm.models.get_pretrained_cfg(TAG).hf_hub_id
    assert repo_id == f'timm-routing/{TAG}'
    assert recording_hf_api.calls == [
        ('create_repo', 'hf_test', repo_id, True),
        ('upload_folder', 'hf_test', repo_id, str(hub / TAG), ['README.md', 'config.json', 'model.safetensors'],
         f'{TAG} from timm-routing'),
    ]
    assert (cards / f'{TAG}.md').read_text() == (hub / TAG / 'README.md').read_text()


def test_dry_run_uploads_nothing(tmp_path, recording_hf_api):
    assert publish.main([TAG, '--cards-dir', str(tmp_path / 'cards'), '--hub-dir', str(tmp_path / 'hub')]) == 0
    assert recording_hf_api.calls == []
    assert (tmp_path / 'hub' / TAG / 'model.safetensors').is_file()


def test_a_tag_without_shipped_weights_is_refused_by_name(tmp_path, capsys):
    assert publish.main(['resnet20.no_such_tag', '--hub-dir', str(tmp_path)]) == 2
    assert "not shipped tags: ['resnet20.no_such_tag']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_readme_zoo_table_is_what_publish_prints():
    readme = (ROOT / 'README.md').read_text().splitlines()
    table = publish.zoo_table(publish.shipped_tags()).splitlines()
    start = readme.index(table[0])
    stale = 'README zoo table out of date: python scripts/publish.py --zoo-table'
    assert readme[start:start + len(table)] == table, stale
    assert not readme[start + len(table)].startswith('|'), 'README zoo table lists a tag that is not shipped'
