"""benchmarks/speed.py: the CPU peak comes from the detected ISA, and the pauser always resumes
the processes it stopped (also when the timed block raises)."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"
_spec = importlib.util.spec_from_file_location("bench_speed", _PATH)
speed = importlib.util.module_from_spec(_spec)
sys.modules["bench_speed"] = speed
_spec.loader.exec_module(speed)


def test_peak_from_detected_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    import clinfuse.nn.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma"}))
    monkeypatch.setattr(precision, "default_threads", lambda: 2)
    cpu = speed.detect_cpu(threads=1)
    assert cpu.lanes == 8 and cpu.isa == "AVX2 + FMA" and cpu.bf16 == "none"
    if cpu.ghz > 0:  # 1 core x GHz x 8 lanes x 2 (FMA) x 2 units
        assert cpu.peak_gflops == pytest.approx(cpu.ghz * 32)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    cpu = speed.detect_cpu(threads=2)
    assert cpu.lanes == 16 and "amx_bf16" in cpu.bf16


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_pauser_stops_and_always_resumes(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = tmp_path / "pids"
        pids.write_text(f"{child.pid}\n")
        pauser = speed.Pauser(pids)
        with pytest.raises(RuntimeError), pauser.window():
            time.sleep(0.2)
            assert _state(child.pid) == "T"
            raise RuntimeError("timed block failed")
        time.sleep(0.2)
        assert _state(child.pid) != "T"
    finally:
        child.kill()
        child.wait()
