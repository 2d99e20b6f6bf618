#!/usr/bin/env python3
"""Compares a WAV a checker decoded with the source WAV the call played.

exact: same rate; after finding the alignment, every overlapping sample must be equal (use
       --quantize ulaw|alaw when the source is linear PCM that went through G.711 on the way).
corr:  the source is resampled to the decoded rate if needed; the best lag's normalised
       correlation over the overlap must reach --threshold.

Exit status: 0 match, 1 mismatch (with a message saying how), 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import common


class Unusable(Exception):
    pass


def load(path: str, channel: int) -> tuple[int, np.ndarray]:
    try:
        rate, channels, data = common.read_wav(path)
    except (OSError, EOFError, ValueError) as e:
        raise Unusable(f"cannot read {path}: {e}") from e
    if channel >= channels:
        raise Unusable(f"{path} has {channels} channel(s), no channel {channel}")
    samples = np.asarray(data, dtype=np.int16)[channel::channels].astype(np.float64)
    if samples.size == 0:
        raise Unusable(f"{path} holds no samples")
    return rate, samples


def quantize(samples: np.ndarray, law: str) -> np.ndarray:
    encode = common.ulaw_encode if law == "ulaw" else common.alaw_encode
    table = common.ULAW_TABLE if law == "ulaw" else common.ALAW_TABLE
    return np.array([table[encode(int(v))] for v in samples], dtype=np.float64)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited (FFT) resampling: keeps the spectrum below both Nyquist frequencies."""
    if src_rate == dst_rate:
        return samples
    n_out = int(round(samples.size * dst_rate / src_rate))
    spectrum = np.fft.rfft(samples)
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    keep = min(spectrum.size, out.size)
    out[:keep] = spectrum[:keep]
    return np.fft.irfft(out, n_out) * (n_out / samples.size)


class Alignment:
    """Lags L with decoded[i] ~ source[i + L], scored by normalised correlation over the overlap."""

    def __init__(self, decoded: np.ndarray, source: np.ndarray):
        n, m = decoded.size, source.size
        size = 1 << (n + m).bit_length()
        raw = np.fft.irfft(np.fft.rfft(source, size) * np.conj(np.fft.rfft(decoded, size)), size)
        self.lags = np.arange(-(n - 1), m)
        self.dot = np.concatenate([raw[size - (n - 1):], raw[:m]]) if n > 1 else raw[:m]
        # Overlap of decoded[i] (0 <= i < n) with source[i + L] (0 <= i + L < m).
        lo = np.maximum(0, -self.lags)
        hi = np.minimum(n, m - self.lags)
        self.overlap = hi - lo
        d2 = np.concatenate([[0.0], np.cumsum(decoded ** 2)])
        s2 = np.concatenate([[0.0], np.cumsum(source ** 2)])
        energy_d = d2[hi] - d2[lo]
        energy_s = s2[hi + self.lags] - s2[lo + self.lags]
        denom = np.sqrt(energy_d * energy_s)
        self.score = np.divide(self.dot, denom, out=np.zeros_like(self.dot), where=denom > 0)
        self.lo, self.hi = lo, hi

    def candidates(self, min_overlap: int, max_lag: int | None) -> np.ndarray:
        ok = self.overlap >= min_overlap
        if max_lag is not None:
            ok &= np.abs(self.lags) <= max_lag
        idx = np.nonzero(ok)[0]
        return idx[np.argsort(-self.score[idx], kind="stable")]


def compare(args: argparse.Namespace) -> tuple[bool, str]:
    d_rate, decoded = load(args.decoded, args.decoded_channel)
    s_rate, source = load(args.source, args.source_channel)
    if args.quantize:
        source = quantize(source, args.quantize)
    if args.mode == "exact":
        if d_rate != s_rate:
            return False, (f"exact mode needs equal rates: decoded {d_rate} Hz, source {s_rate} Hz "
                           "(use --mode corr for resampled audio)")
    else:
        source = resample(source, s_rate, d_rate)
    min_overlap = max(1, int(args.min_overlap * min(decoded.size, source.size)))
    max_lag = None if args.max_lag_s is None else int(args.max_lag_s * d_rate)
    align = Alignment(decoded, source)
    order = align.candidates(min_overlap, max_lag)
    if order.size == 0:
        return False, (f"no alignment overlaps {min_overlap} samples (--min-overlap {args.min_overlap}) "
                       f"within --max-lag-s {args.max_lag_s}: decoded {decoded.size}, source {source.size} samples")
    what = f"decoded {decoded.size} samples @ {d_rate} Hz vs source {source.size}"
    if args.mode == "corr":
        best = order[0]
        lag, score = int(align.lags[best]), float(align.score[best])
        detail = (f"best lag {lag} samples ({lag / d_rate:+.4f} s), normalised correlation {score:.5f} over "
                  f"{int(align.overlap[best])} samples; {what}")
        if score >= args.threshold:
            return True, f"correlation match: {detail}"
        return False, f"correlation {score:.5f} below --threshold {args.threshold}: {detail}"
    best_report = None
    for k in order[: args.exact_candidates]:
        lag, lo, hi = int(align.lags[k]), int(align.lo[k]), int(align.hi[k])
        a, b = decoded[lo:hi], source[lo + lag:hi + lag]
        diff = np.nonzero(a != b)[0]
        if diff.size == 0:
            return True, (f"exact match: {hi - lo} samples equal at lag {lag} ({lag / d_rate:+.4f} s); {what}")
        if best_report is None or diff.size < best_report[0]:
            i = int(diff[0])
            best_report = (int(diff.size), lag, hi - lo, lo + i, int(a[i]), int(b[i]))
    count, lag, total, at, got, want = best_report  # type: ignore[misc]
    return False, (f"not sample-exact: best lag {lag} ({lag / d_rate:+.4f} s) has {count} of {total} overlapping "
                   f"samples different, first at decoded sample {at}: {got} != source {want}; {what}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("decoded", help="WAV written by a checker (--wav-dir)")
    p.add_argument("source", help="reference WAV (what was played into the call)")
    p.add_argument("--mode", choices=("exact", "corr"), default="exact")
    p.add_argument("--quantize", choices=("ulaw", "alaw"), help="pass the source through G.711 first")
    p.add_argument("--threshold", type=float, default=0.99, help="corr mode: lowest normalised correlation")
    p.add_argument("--min-overlap", type=float, default=0.9,
                   help="overlap needed, as a fraction of the shorter signal")
    p.add_argument("--max-lag-s", type=float, help="largest alignment offset searched (default: any)")
    p.add_argument("--exact-candidates", type=int, default=32,
                   help="exact mode: how many best-correlated lags to test for equality")
    p.add_argument("--decoded-channel", type=int, default=0)
    p.add_argument("--source-channel", type=int, default=0)
    args = p.parse_args()
    try:
        ok, message = compare(args)
    except Unusable as e:
        print(f"compare: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"compare: {message}", file=sys.stdout if ok else sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
