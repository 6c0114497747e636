"""The environment block of a report: the settings that decide what a gradient audit measures
(versions, device, dtype, TF32 and determinism flags); no timestamps, so identical audits give
identical environments."""
from __future__ import annotations

import os
import platform

import torch


def _tf32_flags() -> dict:
    """TF32 settings; on torch >= 2.9 only the fp32_precision API is read (never mixed with the old)."""
    flags = {}
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        flags["matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
        flags["cudnn_conv_fp32_precision"] = torch.backends.cudnn.conv.fp32_precision
        flags["fp32_precision"] = getattr(torch.backends, "fp32_precision", None)
        flags["tf32_matmul"] = flags["matmul_fp32_precision"] == "tf32" or (
            flags["matmul_fp32_precision"] == "none" and flags["fp32_precision"] == "tf32")
        flags["tf32_conv"] = flags["cudnn_conv_fp32_precision"] == "tf32" or (
            flags["cudnn_conv_fp32_precision"] == "none" and flags["fp32_precision"] == "tf32")
    else:
        flags["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        flags["allow_tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        flags["tf32_matmul"] = flags["allow_tf32_matmul"] or flags["float32_matmul_precision"] != "highest"
        flags["tf32_conv"] = flags["allow_tf32_cudnn"]
    return flags


def environment(dtype=None, device=None, seed=None) -> dict:
    """The settings that decide what a gradient audit measures (no timestamps: identical audits give
    identical environments)."""
    import torchbp
    device = torch.device(device) if device is not None else None
    cuda = torch.cuda.is_available()
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    flags = _tf32_flags()
    on_cuda = device is not None and device.type == "cuda"
    fp32 = dtype in (None, torch.float32)
    return {
        "torchbp": torchbp.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": cuda, "device": str(device) if device is not None else None, "device_name": name,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        **{k: v for k, v in flags.items() if k not in ("tf32_matmul", "tf32_conv")},
        "tf32": bool(on_cuda and fp32 and (flags["tf32_matmul"] or flags["tf32_conv"])),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "num_threads": torch.get_num_threads(), "seed": seed,
    }
