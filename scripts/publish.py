#!/usr/bin/env python3
""" Model cards and Hugging Face Hub folders for every shipped tag; `--push` uploads them

    python scripts/publish.py                      # writes model_cards/<tag>.md and hub/<tag>/ (dry run)
    python scripts/publish.py --push --token hf_…  # also creates/updates timm-routing/<tag> on the Hub

A tag is shipped when `timm_routing/pretrained/<tag>.safetensors` exists; its card is built from the evidence in
`results/<tag>/` (train.py's summary.csv and args.yaml, and `python -m timm_routing.evaluate` JSONs) and its recipe in
`scripts/recipes/<tag>.yaml`.
"""
import argparse
import sys
from pathlib import Path

import timm

import timm_routing  # noqa: F401  registers the models
from timm_routing.hub import format_percent, load_evidence, render_model_card, save_hub_folder
from timm_routing.models._pretrained import PRETRAINED_DIR

ROOT = Path(__file__).resolve().parent.parent


def shipped_tags():
    return sorted(name for name in timm.list_pretrained() if (PRETRAINED_DIR / f'{name}.safetensors').exists())


def zoo_table(tags) -> str:
    """Markdown table of the shipped tags: parameters and the accuracies of their evidence."""
    lines = ['| model | test set | params (M) | test top-1 | test top-5 | validation top-1 | card |',
             '|---|---|---|---|---|---|---|']
    for tag in tags:
        evals = load_evidence(ROOT / 'results' / tag)['evals']
        test_set = {None: evals['test']['dataset'].replace('.npz', '')}.get(
            evals['test'].get('variant'), evals['test'].get('variant'))
        params = sum(p.numel() for p in timm.create_model(tag).parameters()) / 1e6
        test, val = evals['test'], evals.get('validation')
        lines.append(
            f"| `{tag}` | {test_set} | {params:.3f} | {format_percent(test['top1'])} | "
            f"{format_percent(test['top5'])} | "
            f"{format_percent(val['top1']) if val else '-'} | [card](model_cards/{tag}.md) |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('tags', nargs='*', help='model.tag names (default: every shipped tag)')
    parser.add_argument('--cards-dir', default=str(ROOT / 'model_cards'))
    parser.add_argument('--hub-dir', default=str(ROOT / 'hub'))
    parser.add_argument('--push', action='store_true', help='upload each folder to its hf_hub_id')
    parser.add_argument('--token', default=None, help='Hugging Face token (default: the logged-in user)')
    parser.add_argument('--zoo-table', action='store_true', help="print the README's zoo table and stop")
    args = parser.parse_args(argv)
    if args.zoo_table:
        print(zoo_table(args.tags or shipped_tags()))
        return 0
    tags = args.tags or shipped_tags()
    unknown = [t for t in tags if t not in shipped_tags()]
    if unknown:
        print(f'publish: not shipped tags: {unknown}', file=sys.stderr)
        return 2
    for tag in tags:
        recipe_path = ROOT / 'scripts' / 'recipes' / f'{tag}.yaml'
        notes_path = ROOT / 'results' / tag / 'notes.md'
        card = render_model_card(
            tag, load_evidence(ROOT / 'results' / tag),
            recipe=recipe_path.read_text() if recipe_path.exists() else None,
            notes=notes_path.read_text() if notes_path.exists() else None)
        Path(args.cards_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.cards_dir) / f'{tag}.md').write_text(card)
        folder = save_hub_folder(tag, Path(args.hub_dir) / tag, card)
        print(f'{tag}: card and {folder}')
        if args.push:
            from huggingface_hub import HfApi
            repo_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
            api = HfApi(token=args.token)
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f'{tag} from timm-routing')
            print(f'{tag}: pushed to https://huggingface.co/{repo_id}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
