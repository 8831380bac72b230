"""A whole network's convolution time from per-layer benchmark points, with the per-layer choice.

A network set (`workloads.NETWORKS`) lists each distinct convolution shape once with its `count`.
Given `scripts/bench.py` points for such a set, the network's time is the sum of count x time per
shape, for: every layer dense (each dense baseline), and every layer the faster of the sparse
kernel and a dense baseline (what `tvm_sparseconv.keras.sparsify` does layer by layer). A layer
whose sparse result was wrong counts as dense. Where the points also measured TF32 mode
(`bench.py --precision tf32`: TF32 tensor-core algorithms allowed), a third total takes each layer
the fastest of that, the fp32 sparse kernel and the default dense baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .workloads import NETWORKS

#: per device kind, the dense baselines a network total is given against: (strict fp32, default)
DENSE = {"gpu": ("cudnn_fp32", "cudnn_tf32"), "cpu": ("tf_conv2d", "tf_conv2d")}


@dataclass(frozen=True)
class NetworkTime:
    """Seconds for one pass of a network's convolutions (one batch)."""

    network: str
    layers: int  # convolutions in the network (sum of counts)
    shapes: int  # distinct shapes measured
    missing: tuple[str, ...]  # shapes without a correct measured point (the totals then are partial)
    dense_fp32: float  # every layer dense, strict fp32
    dense_default: float  # every layer dense at the framework's default (TF32 on Ampere and newer GPUs)
    chosen_fp32: float  # each layer the faster of sparse and dense fp32: strict fp32 throughout
    chosen_default: float  # each layer the faster of sparse and dense at the default precision
    sparse_layers_fp32: int  # layers (with counts) where sparse beat dense fp32
    sparse_layers_default: int  # layers where sparse beat the default dense
    #: each layer the fastest of sparse in TF32 mode, sparse fp32 and the default dense (None: not measured)
    chosen_tf32_mode: float | None = None

    def as_dict(self) -> dict:
        return asdict(self) | {
            "speedup_fp32": self.dense_fp32 / self.chosen_fp32,
            "speedup_default": self.dense_default / self.chosen_default,
            "fp32_chosen_vs_dense_default": self.dense_default / self.chosen_fp32,
        } | ({"speedup_tf32_mode": self.dense_default / self.chosen_tf32_mode} if self.chosen_tf32_mode else {})


def network_times(points: list[dict], device: str, key: str = "seconds") -> list[NetworkTime]:
    """One `NetworkTime` per network set that has points (`device`: "gpu" or "cpu"), from each
    point's times under `key` ("seconds"; "call_seconds" for bench.py --call-times)."""
    fp32_key, default_key = DENSE[device]
    out = []
    for network, problems in NETWORKS.items():
        measured = {p["problem"]: p for p in points if p.get("sweep") == network and key in p}
        if not measured:
            continue
        tot = dict(dense_fp32=0.0, dense_default=0.0, chosen_fp32=0.0, chosen_default=0.0)
        wins = dict(fp32=0, default=0)
        missing = []
        # per-call times are not measured in TF32 mode: its total is device time only
        tf32_mode = 0.0 if key == "seconds" and any("tf32_mode" in p for p in measured.values()) else None
        for problem in problems:
            p = measured.get(problem.name)
            s = p[key] if p else {}
            fp32, default = s.get(fp32_key), s.get(default_key)
            if not (isinstance(fp32, float) and isinstance(default, float)):
                missing.append(problem.name)
                continue
            sparse = s["sparse"] if p.get("correct") else float("inf")
            c = problem.count
            tot["dense_fp32"] += c * fp32
            tot["dense_default"] += c * default
            tot["chosen_fp32"] += c * min(sparse, fp32)
            tot["chosen_default"] += c * min(sparse, default)
            if tf32_mode is not None:
                t = p.get("tf32_mode", {})
                tf32_mode += c * min(sparse, t["seconds"] if t.get("correct") else float("inf"), default)
            wins["fp32"] += c * (sparse < fp32)
            wins["default"] += c * (sparse < default)
        out.append(NetworkTime(
            network, sum(p.count for p in problems), len(problems) - len(missing), tuple(missing),
            **tot, sparse_layers_fp32=wins["fp32"], sparse_layers_default=wins["default"], chosen_tf32_mode=tf32_mode,
        ))
    return out


def markdown(times: list[NetworkTime], device: str) -> str:
    """A table of network totals (empty when there are none)."""
    if not times:
        return ""
    fp32, default = DENSE[device]
    columns = [  # (heading, cell, kept where the two dense baselines are one: CPUs)
        (f"all {fp32} ms", lambda t, d: f"{t.dense_fp32 * 1e3:.3f}", True),
        (f"all {default} ms", lambda t, d: f"{t.dense_default * 1e3:.3f}", False),
        (f"sparse or {fp32} ms", lambda t, d: f"{t.chosen_fp32 * 1e3:.3f}", True),
        (f"that vs all {fp32}", lambda t, d: f"{d['speedup_fp32']:.2f}", False),
        (f"that vs all {default}", lambda t, d: f"**{d['fp32_chosen_vs_dense_default']:.2f}**", True),
        (f"sparse or {default} ms", lambda t, d: f"{t.chosen_default * 1e3:.3f}", False),
        (f"that vs all {default}", lambda t, d: f"{d['speedup_default']:.2f}", False),
        (f"layers sparse (vs {fp32})", lambda t, d: f"{t.sparse_layers_fp32} of {t.layers}", True),
    ]
    if any(t.chosen_tf32_mode is not None for t in times):  # --precision tf32 runs
        columns += [
            (f"sparse (TF32 mode) or {default} ms",
             lambda t, d: f"{t.chosen_tf32_mode * 1e3:.3f}" if t.chosen_tf32_mode else "n/a", False),
            (f"that vs all {default}", lambda t, d: f"**{d['speedup_tf32_mode']:.2f}**" if t.chosen_tf32_mode else "n/a",
             False),
        ]
    shown = [(head, cell) for head, cell, single in columns if single or fp32 != default]
    lines = ["| network | " + " | ".join(head for head, _ in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for t in times:
        d = t.as_dict()
        note = f" ({t.shapes} of {t.shapes + len(t.missing)} shapes)" if t.missing else ""
        lines.append(f"| {t.network}{note} | " + " | ".join(cell(t, d) for _, cell in shown) + " |")
    return "\n".join(lines) + "\n"


def markdown_with_calls(points: list[dict], device: str) -> str:
    """`markdown` of the device-time totals and, where the run also measured per-call times
    (`bench.py --call-times`), of those beside them (empty when there are no network points)."""
    text = markdown(network_times(points, device), device)
    per_call = markdown(network_times(points, device, key="call_seconds"), device)
    if text and per_call:
        text = ("Device time (kernels back to back):\n\n" + text
                + "\nThe same run, per call from Python (host overhead included: PyTorch's for cuDNN):\n\n"
                + per_call)
    return text
