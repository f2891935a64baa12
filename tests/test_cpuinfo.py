"""The CPU description behind the benchmark's header and wide_matmul's cache key."""

from keras_deepvit import cpuinfo

TWO_CPUS = (
    "processor : 0\nmodel name : AMD EPYC\ncpu family : 25\nmodel : 1\nflags : fpu avx2 fma\n\n"
    "processor : 1\nmodel name : other\ncpu family : 1\nmodel : 2\nflags : fpu\n"
)
XEON = "processor : 0\nmodel name : Intel Xeon\ncpu family : 6\nmodel : 167\nflags : avx512f avx512_bf16 amx_bf16\n"


def test_cpu_model_names_the_first_cpu_with_its_generation():
    assert cpuinfo.cpu_model(TWO_CPUS) == "AMD EPYC (family 25, model 1)"
    assert cpuinfo.cpu_model("model name : Bare\n") == "Bare"
    assert cpuinfo.cpu_model("flags : fpu") is None


def test_cpu_flags_reports_present_and_absent_flags():
    flags = cpuinfo.cpu_flags(TWO_CPUS.split("\n\n")[0])
    assert list(flags) == list(cpuinfo.CPU_FLAGS)
    assert flags["avx2"] and flags["fma"] and not flags["avx512f"] and not flags["amx_bf16"]
    assert cpuinfo.cpu_flags(XEON, ("amx_bf16", "amx_int8")) == {"amx_bf16": True, "amx_int8": False}


def test_cpu_identity_tells_cpu_kinds_and_bfloat16_support_apart():
    assert cpuinfo.cpu_identity(XEON) == "Intel Xeon (family 6, model 167); avx512_bf16,amx_bf16"
    assert cpuinfo.cpu_identity(TWO_CPUS) == "AMD EPYC (family 25, model 1); no-bf16-flags"
    assert cpuinfo.cpu_identity(TWO_CPUS) != cpuinfo.cpu_identity(TWO_CPUS.replace("model : 1", "model : 8", 1))


def test_cpu_identity_falls_back_to_the_platform_without_cpuinfo():
    identity = cpuinfo.cpu_identity("")
    assert isinstance(identity, str)


def test_read_cpuinfo_returns_none_for_a_missing_file(tmp_path):
    assert cpuinfo.read_cpuinfo(str(tmp_path / "absent")) is None
    (tmp_path / "cpuinfo").write_text(XEON)
    assert cpuinfo.read_cpuinfo(str(tmp_path / "cpuinfo")) == XEON


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(cpuinfo)
    assert result.attempted >= 4 and result.failed == 0
