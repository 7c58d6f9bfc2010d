"""The CPU's arithmetic limit, measured: an fp32 FMA and an int8 dot-product micro-kernel in C.

    PYTHONPATH=. python benchmarks/cpu_peak.py --threads 2

The kernels are compiled with ``gcc -O3 -march=native`` at run time (a few hundred ms) and run on
``threads`` POSIX threads for about ``seconds`` each; the rate is the total over the wall time.

* fp32: 12 independent chains of ``vfmadd`` on the widest vectors the CPU has (AVX-512: 16 lanes,
  AVX2: 8), enough to cover the FMA latency on both FMA pipes; 2 FLOP per lane per FMA.
* int8: with VNNI (``avx512_vnni`` or ``avx_vnni``) 12 chains of ``vpdpbusd`` (4 u8 x s8 multiply-adds
  into each int32 lane); without, the AVX2 sequence ONNX Runtime's int8 kernels use there
  (``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``). 2 ops per multiply-add, as for fp32.

Without gcc the fp32 limit is estimated as clock x lanes x 2 FMA pipes x 2 x threads and labelled so.
Also: the load average and whether the machine is busy (``busy``): a load above the core count
means other work competes for the cores and timings are not the machine's.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static long iters; static int mode; static volatile float sink_f; static volatile int sink_i;

#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vf; typedef __m512i vi;
#define SETF(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SUMF(v) _mm512_reduce_add_ps(v)
#define SETI(x) _mm512_set1_epi32(x)
#define SUMI(v) _mm512_reduce_add_epi32(v)
#if defined(__AVX512VNNI__)
#define DOT(acc, a, b) _mm512_dpbusd_epi32(acc, a, b)
#define HAVE_VNNI 1
#endif
#else
#define LANES 8
typedef __m256 vf; typedef __m256i vi;
#define SETF(x) _mm256_set1_ps(x)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
static float SUMF(__m256 v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#define SETI(x) _mm256_set1_epi32(x)
static int SUMI(__m256i v) { int t[8]; _mm256_storeu_si256((__m256i *)t, v); int s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#if defined(__AVXVNNI__)
#define DOT(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#define HAVE_VNNI 1
#endif
#endif
#ifndef HAVE_VNNI
#define HAVE_VNNI 0
#endif

static void *fp32(void *arg) {
    (void)arg;
    vf b = SETF(0.999f), c = SETF(1e-7f);
    vf a0 = SETF(1), a1 = SETF(2), a2 = SETF(3), a3 = SETF(4), a4 = SETF(5), a5 = SETF(6);
    vf a6 = SETF(7), a7 = SETF(8), a8 = SETF(9), a9 = SETF(10), a10 = SETF(11), a11 = SETF(12);
    for (long i = 0; i < iters; i++) {
        a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
        a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
        a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    }
    vf s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    sink_f = SUMF(s);
    return NULL;
}

static void *int8(void *arg) {
    (void)arg;
    vi acc[12]; vi x = SETI(0x01010101), y = SETI(0x02020202);
    for (int k = 0; k < 12; k++) acc[k] = SETI(k);
#if HAVE_VNNI
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = DOT(acc[k], x, y);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i x2 = _mm256_set1_epi32(0x01010101), y2 = _mm256_set1_epi32(0x02020202);
    __m256i a2[12]; for (int k = 0; k < 12; k++) a2[k] = _mm256_set1_epi32(k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++)
            a2[k] = _mm256_add_epi32(a2[k], _mm256_madd_epi16(_mm256_maddubs_epi16(x2, y2), ones));
    for (int k = 0; k < 12; k++) acc[k] = SETI(SUMI_AVX2(a2[k]));
#endif
    vi s = acc[0]; for (int k = 1; k < 12; k++) s = s + acc[k];
    sink_i = SUMI(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: peak fp32|int8 THREADS ITERS\n"); return 2; }
    mode = strcmp(argv[1], "int8") == 0; int threads = atoi(argv[2]); iters = atol(argv[3]);
    pthread_t t[256]; if (threads < 1 || threads > 256) return 2;
    double t0 = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, mode ? int8 : fp32, NULL);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double dt = now() - t0;
    /* ops per chain step: fp32 FMA = 2 * LANES; VNNI = 2 * 4 * int32 lanes; AVX2 maddubs = 2 * 32 */
    int int8_lanes = HAVE_VNNI ? 4 * LANES : 32;
    double ops = (double)threads * iters * 12 * 2.0 * (mode ? int8_lanes : LANES);
    printf("%s %d %d %.6f %.3f\n", mode ? "int8" : "fp32", LANES, HAVE_VNNI, dt, ops / dt / 1e9);
    return 0;
}
"""  # noqa: E501

# AVX2 horizontal sum used by the non-VNNI int8 path (defined before use).
SOURCE = SOURCE.replace(
    "static void *fp32(void *arg)",
    "static int SUMI_AVX2(__m256i v) { int t[8]; _mm256_storeu_si256((__m256i *)t, v); int s = 0; "
    "for (int i = 0; i < 8; i++) s += t[i]; return s; }\n\nstatic void *fp32(void *arg)",
)


@dataclass
class Peak:
    """A measured (or estimated) limit.

    Attributes:
        kind: ``fp32`` or ``int8``.
        gops: GFLOP/s (fp32) or GOP/s (int8 multiply-adds x 2) over all threads.
        threads: threads used.
        how: what was measured, for the table's caption.
    """

    kind: str
    gops: float
    threads: int
    how: str


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def busy(threads: int, load: Optional[float] = None) -> bool:
    """Whether other work competes for the cores: load beyond the cores, ours (``threads``) aside."""
    cores = os.cpu_count() or 1
    load = load_average() if load is None else load
    return load - min(threads, cores) > cores * 0.25 and load > cores


@functools.lru_cache(maxsize=1)
def _binary() -> Optional[Path]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="msdn-peak-"))
    src, exe = folder / "peak.c", folder / "peak"
    src.write_text(SOURCE)
    result = subprocess.run(
        [gcc, "-O3", "-march=native", "-pthread", str(src), "-o", str(exe)], capture_output=True, text=True
    )
    if result.returncode != 0:
        print(f"cpu_peak: gcc failed, estimating instead:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return exe


def _flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _estimate(threads: int) -> Peak:
    flags = _flags()
    lanes = 16 if "avx512f" in flags else 8
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    except (OSError, ValueError):
        pass
    gflops = mhz / 1000 * lanes * 2 * 2 * threads
    return Peak("fp32", gflops, threads, f"estimated: {mhz:.0f} MHz x {lanes} lanes x 2 FMA pipes x 2 x {threads}")


def measure(kind: str = "fp32", *, threads: int = 0, seconds: float = 0.5) -> Peak:
    """The ``kind`` (``fp32`` / ``int8``) limit on ``threads`` threads (0: all cores), best of 3 runs."""
    threads = threads or os.cpu_count() or 1
    exe = _binary()
    if exe is None:
        if kind != "fp32":
            return Peak(kind, float("nan"), threads, "no compiler: not measured")
        return _estimate(threads)
    iters = 2_000_000
    while True:  # calibrate the iteration count to about ``seconds``
        out = subprocess.run([str(exe), kind, str(threads), str(iters)], capture_output=True, text=True, check=True)
        _, lanes, vnni, dt, _ = out.stdout.split()
        if float(dt) >= seconds * 0.5 or iters > 4_000_000_000:
            break
        iters = int(iters * max(2.0, seconds / max(float(dt), 1e-4)))
    rates = []
    for _ in range(3):
        out = subprocess.run([str(exe), kind, str(threads), str(iters)], capture_output=True, text=True, check=True)
        _, lanes, vnni, dt, rate = out.stdout.split()
        rates.append(float(rate))
    width = f"{int(lanes) * 32}-bit"
    if kind == "fp32":
        how = f"{width} FMA kernel, 12 chains"
    else:
        how = f"{width} {'VNNI vpdpbusd' if vnni == '1' else 'AVX2 vpmaddubsw+vpmaddwd+vpaddd (no VNNI)'} kernel"
    return Peak(kind, max(rates), threads, f"{how}, {threads} threads, best of 3")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="threads (0: all cores)")
    parser.add_argument("--seconds", type=float, default=0.5, help="about this long per run")
    args = parser.parse_args(argv)
    load = load_average()
    for kind in ("fp32", "int8"):
        p = measure(kind, threads=args.threads, seconds=args.seconds)
        print(f"{kind}: {p.gops:.1f} G{'FLOP' if kind == 'fp32' else 'OP'}/s ({p.how})")
    print(
        f"load average {load:.2f} on {os.cpu_count()} cores{' (BUSY: not the machine alone)' if busy(0, load) else ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
