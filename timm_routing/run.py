""" Runs one of timm's own scripts with this package's models registered

timm's train.py has `--device-modules timm_routing`; validate.py, benchmark.py, inference.py and onnx_export.py have
no import hook, so run them through this module:

    python -m timm_routing.run validate.py --model convnet4_routing.cpu_fmnist --pretrained --data-dir <folder> ...

The script path comes first (a file; timm's scripts are not part of the timm wheel: take them from timm's GitHub
repository at the tag of the installed timm), then the script's own arguments. The script runs as `__main__` in this
process, after `import timm_routing`.
"""
import runpy
import sys
from pathlib import Path

__all__ = ['main']


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f'timm_routing.run: script {script} not found (take timm\'s scripts from its GitHub repository)',
              file=sys.stderr)
        return 2
    import timm_routing  # noqa: F401  registers the models with timm before the script looks them up
    sys.argv = [str(script)] + argv[1:]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
