"""Every module of the package imports on its own, whichever a user (or a test) imports first: the
package's lazy `__init__` leaves the order of first imports to the caller, so an import cycle between
modules shows only when the cycle's wrong end comes first."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import hf_efficient_attn

CHECK = """
import importlib, sys, traceback
names = sys.argv[1:]
failed = []
for name in names:
    for loaded in [key for key in sys.modules if key == "hf_efficient_attn" or key.startswith("hf_efficient_attn.")]:
        del sys.modules[loaded]
    try:
        module, _, attribute = name.partition(":")
        imported = importlib.import_module(module)
        if attribute:
            getattr(imported, attribute)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("hf_efficient_attn"):
            continue  # an optional dependency this installation lacks (an extra not installed)
        failed.append(name + "\\n" + traceback.format_exc(limit=-3))
    except Exception:
        failed.append(name + "\\n" + traceback.format_exc(limit=-3))
print("\\n".join(failed))
"""


def test_every_module_and_public_name_imports_first():
    modules = [info.name for info in pkgutil.walk_packages(hf_efficient_attn.__path__, "hf_efficient_attn.")
               if not info.name.endswith("__main__")]
    public = [f"hf_efficient_attn:{name}" for name in hf_efficient_attn.__all__]
    assert len(modules) > 40 and "hf_efficient_attn.dispatch" in modules
    result = subprocess.run([sys.executable, "-c", CHECK, *modules, *public], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "", f"imported first, these fail:\n{result.stdout}"
