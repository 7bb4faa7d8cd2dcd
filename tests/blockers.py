"""Source text that makes ``import torch`` fail in a subprocess, for the torch-free tests.

Paste it at the top of a ``python -c`` script: it installs a meta-path finder that refuses
``torch`` and every ``torch.*`` module, so a lazy or transitive import fails loudly.
"""

BLOCK_TORCH = '''
import importlib, pkgutil, sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (importing {name})")
        return None

sys.meta_path.insert(0, BlockTorch())
'''
