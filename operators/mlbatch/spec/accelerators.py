"""`compute.accelerator_type`: one GPU vocabulary for every backend, translated per backend.

The spec names a GPU as Compute Engine does (Dataflow's `worker_accelerator=type:<name>` takes that name
as it is); Vertex wants its `AcceleratorType` enum name (google.cloud.aiplatform_v1.types.AcceleratorType);
SageMaker has no accelerator setting at all: the GPU comes with the instance type, so there the name must
be the GPU that `compute.machine_type` carries. Before this table a value worked on one backend only.

Sources: Dataflow GPU types https://cloud.google.com/dataflow/docs/gpu/gpu-support (and use-l4-gpus);
Vertex enum: aiplatform_v1 AcceleratorType (checked against the installed client in tests/test_spec_backends.py);
SageMaker instance GPUs: https://aws.amazon.com/sagemaker/pricing/ (instance details).
"""

from __future__ import annotations

# spec name -> (on Dataflow, Vertex AcceleratorType name or None)
ACCELERATORS: dict[str, tuple[bool, str | None]] = {
    "nvidia-tesla-t4": (True, "NVIDIA_TESLA_T4"),
    "nvidia-tesla-p4": (True, "NVIDIA_TESLA_P4"),
    "nvidia-tesla-p100": (True, "NVIDIA_TESLA_P100"),
    "nvidia-tesla-v100": (True, "NVIDIA_TESLA_V100"),
    "nvidia-tesla-a100": (True, "NVIDIA_TESLA_A100"),
    "nvidia-a100-80gb": (True, "NVIDIA_A100_80GB"),
    "nvidia-l4": (True, "NVIDIA_L4"),
    "nvidia-h100-80gb": (True, "NVIDIA_H100_80GB"),
    "nvidia-h100-mega-80gb": (True, "NVIDIA_H100_MEGA_80GB"),
    "nvidia-a10g": (False, None),   # SageMaker ml.g5 only
    "nvidia-l40s": (False, None),   # SageMaker ml.g6e only
}

# SageMaker instance family (the part of ml.<family>.<size>) -> the GPU it carries
SAGEMAKER_GPUS: dict[str, str] = {
    "g4dn": "nvidia-tesla-t4", "g5": "nvidia-a10g", "g6": "nvidia-l4", "g6e": "nvidia-l40s",
    "p3": "nvidia-tesla-v100", "p4d": "nvidia-tesla-a100", "p4de": "nvidia-a100-80gb", "p5": "nvidia-h100-80gb",
}


def known(name: str) -> bool:
    return name in ACCELERATORS


def allowed_on(backend: str) -> list[str]:
    """The names a backend can translate, in table order."""
    if backend == "dataflow":
        return [n for n, (dataflow, _) in ACCELERATORS.items() if dataflow]
    if backend == "vertex":
        return [n for n, (_, vertex) in ACCELERATORS.items() if vertex]
    return list(ACCELERATORS)


def vertex_name(name: str) -> str:
    """The Vertex `AcceleratorType` enum name of a spec name (KeyError when Vertex has none)."""
    vertex = ACCELERATORS[name][1]
    if vertex is None:
        raise KeyError(f"accelerator {name!r} is not available on Vertex AI")
    return vertex


def dataflow_service_option(name: str, count: int) -> str:
    """Dataflow's GPU service option (https://cloud.google.com/dataflow/docs/gpu/use-gpus; Dataflow
    installs the driver)."""
    return f"worker_accelerator=type:{name};count:{count};install-nvidia-driver"


def sagemaker_gpu(machine_type: str | None) -> str | None:
    """The GPU a SageMaker instance type carries (`ml.g4dn.xlarge` -> nvidia-tesla-t4), None if none known."""
    parts = (machine_type or "").split(".")
    if len(parts) != 3 or parts[0] != "ml":
        return None
    return SAGEMAKER_GPUS.get(parts[1])
