"""What this machine's CPU is, from /proc/cpuinfo: model, family and the flags kernels depend on.

The frameworks' CPU code chooses its kernels from the CPU's features (oneDNN and
XLA:CPU use AVX-512, AVX512-BF16 and AMX where present), so a speed measured on one
CPU kind says little about another. The benchmark prints this description above
its tables, and `keras_deepvit.layers.machine_facts` keys its cached measurements
by it. This module imports nothing of Keras or the frameworks, so anything in the
package may use it.
"""

import platform

#: CPU features that decide which kernels the frameworks' CPU code uses (oneDNN,
#: XLA:CPU): a result measured on an AVX2 EPYC says little about an AVX-512/AMX Xeon.
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma")

#: The flags of a CPU's bfloat16 GEMM kernels.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpuinfo(path="/proc/cpuinfo"):
    """The text of /proc/cpuinfo, or None where there is none (macOS, Windows).

    Example:
    >>> isinstance(read_cpuinfo(), (str, type(None)))
    True
    """
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def cpu_model(cpuinfo_text):
    """The first CPU's model name with its family and model numbers, from /proc/cpuinfo.

    Virtual machines often report a bare name ("AMD EPYC"); the family and model
    tell the generation apart (AMD family 23: Zen 1/2, 25: Zen 3/4), and with it
    the GEMM peak and the memory bandwidth the ratios depend on.

    Example:
    >>> cpu_model("model name : AMD EPYC\\ncpu family : 25\\nmodel : 1\\nflags : avx2")
    'AMD EPYC (family 25, model 1)'
    """
    fields = {}
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:
            break
    name = fields.get("model name")
    if name is None:
        return None
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_flags(cpuinfo_text, names=CPU_FLAGS):
    """`{flag: present}` for each of `names`, from the text of /proc/cpuinfo.

    Example:
    >>> cpu_flags("flags : fpu avx2 fma")["avx2"], cpu_flags("flags : fpu avx2 fma")["avx512f"]
    (True, False)
    """
    present = set()
    for line in cpuinfo_text.splitlines():
        if line.startswith("flags"):
            present.update(line.split(":", 1)[1].split())
    return {flag: flag in present for flag in names}


def cpu_identity(cpuinfo_text=None):
    """One line naming this CPU and its bfloat16 flags: the key of measurements cached per CPU.

    Falls back to the platform's processor name where /proc/cpuinfo is missing.

    Example:
    >>> cpu_identity("model name : Xeon\\ncpu family : 6\\nmodel : 167\\nflags : amx_bf16")
    'Xeon (family 6, model 167); amx_bf16'
    """
    text = read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    model = cpu_model(text) if text else None
    if model is None:
        return platform.processor() or platform.machine()
    flags = cpu_flags(text, BFLOAT16_FLAGS)
    bfloat16 = ",".join(name for name, on in flags.items() if on) or "no-bf16-flags"
    return f"{model}; {bfloat16}"
