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


def test_readme_line_comes_from_the_runs_numbers() -> None:
    cpu = speed.CpuInfo(
        "AMD EPYC", 2, 2, 2.6, "test", "AVX-512 + FMA", 16, 2, "avx512_bf16", 1.0, ""
    )
    rows = [
        {"case": "phantom_64x64x64", "grid": [64, 64, 64], "guided_s": 4.3, "guided_rss_gb": 0.98,
         "guidance_overhead": 0.16},
        {"case": "phantom_96x112x96", "grid": [96, 112, 96], "guided_s": 19.4,
         "guided_rss_gb": 1.58, "guidance_overhead": 0.24},
        {"case": "chris_t1_2mm", "grid": [88, 120, 88], "guided_s": 18.0, "guided_rss_gb": 1.61,
         "guidance_overhead": 0.28},
    ]  # fmt: skip
    line = speed.readme_line(rows, {"wall_s": 27.6, "peak_rss_gb": 0.82}, cpu, "bf16")
    assert "96×112×96 volume at 2 mm takes 19.4 s and 1.6 GB (bf16" in line
    assert "+16 to +28 %" in line and "`clinfuse demo` takes 28 s and 0.82 GB" in line
    assert "(float32, DDIM-20," in speed.readme_line(rows, None, cpu, "fp32", 20)
    assert "clinfuse demo" not in speed.readme_line(rows, None, cpu, "fp32")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_demo_child_reports_its_own_peak_memory() -> None:
    # the child script of time_demo runs a clinfuse command and prints its VmHWM at exit
    done = subprocess.run(
        [sys.executable, "-c", speed._DEMO_CHILD, "--help"], capture_output=True, text=True
    )
    gb = [ln.split()[1] for ln in done.stderr.splitlines() if ln.startswith("PEAK_RSS_GB")]
    assert done.returncode == 0 and "demo" in done.stdout
    assert gb and 0.01 < float(gb[0]) < 2.0  # a Python process, not a forked copy
