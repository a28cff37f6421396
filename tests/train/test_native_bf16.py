"""The demo recipe's precision follows the machine: bf16 only where bf16 is native (distributed/native_bf16.py)."""
import torch

from prism_fast.distributed import native_bf16
from prism_fast.recipes import get_recipe


def test_flags_decide(monkeypatch, tmp_path):
    import builtins
    real_open = builtins.open

    def cpuinfo(flags):
        def fake_open(path, *a, **k):
            if path == "/proc/cpuinfo":
                f = tmp_path / "cpuinfo"
                f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
                return real_open(f, *a, **k)
            return real_open(path, *a, **k)
        return fake_open

    monkeypatch.setattr(native_bf16.platform, "machine", lambda: "x86_64")
    for flags, want in (("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16 amx_tile", True)):
        native_bf16.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(builtins, "open", cpuinfo(flags))
        assert native_bf16.cpu_has_native_bf16() is want, flags
    native_bf16.cpu_has_native_bf16.cache_clear()


def test_demo_recipe_uses_the_machines_dtype():
    native_bf16.cpu_has_native_bf16.cache_clear()
    want = "bf16" if torch.cuda.is_available() or native_bf16.cpu_has_native_bf16() else "fp32"
    assert get_recipe("demo")().parallel.param_dtype == want
