"""The generator's metrics (docs/operations.md lists them with the questions they answer).

What happens on the device (model loads, attached LoRAs, GPU memory) is
reported by the device runner after each command it runs, in the device
process or thread, and recorded here by the engine.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import COUNT_BUCKETS, DURATION_BUCKETS, FAST_BUCKETS, ServiceMetrics
from services.generator.device_report import DeviceReport

# A denoising step: ~1 ms on the tiny CPU models, tens of ms to seconds on real ones.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GeneratorMetrics(ServiceMetrics):
    """What the generator records, on its own registry."""

    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.queue_depth = Gauge("facegen_generator_queue_depth",
                                 "Requests waiting for the device (not counting the batch on it).", registry=registry)
        self.queue_wait_seconds = Histogram("facegen_generator_queue_wait_seconds",
                                            "From a request's arrival to the start of its batch, by model.",
                                            ["model"], buckets=DURATION_BUCKETS, registry=registry)
        self.batches = Counter("facegen_generator_batches_total",
                               "Pipeline calls, by model and outcome (done, cancelled: every caller left, failed).",
                               ["model", "outcome"], registry=registry)
        self.batch_images = Histogram("facegen_generator_batch_images", "Images per pipeline call, by model.",
                                      ["model"], buckets=COUNT_BUCKETS, registry=registry)
        self.batch_requests = Histogram("facegen_generator_batch_requests", "Requests per pipeline call, by model.",
                                        ["model"], buckets=COUNT_BUCKETS, registry=registry)
        self.step_seconds = Histogram(
            "facegen_generator_step_seconds",
            "Time per denoising step, by model: each step of a batch counts with the batch's mean step time.",
            ["model"], buckets=STEP_BUCKETS, registry=registry)
        self.out_of_memory = Counter("facegen_generator_out_of_memory_total",
                                     "Requests refused because the device ran out of memory, by model.", ["model"],
                                     registry=registry)
        self.model_load_seconds = Histogram("facegen_generator_model_load_seconds",
                                            "Time to load a model onto the device, by model.", ["model"],
                                            buckets=(*FAST_BUCKETS, 60.0, 120.0, 300.0, 600.0), registry=registry)
        self.model_loaded = Gauge("facegen_generator_model_loaded", "1 while a catalog model is in device memory.",
                                  ["model"], registry=registry)
        self.lora_loaded = Gauge("facegen_generator_lora_loaded",
                                 "1 while a LoRA adapter is attached to a loaded model.", ["model", "lora"],
                                 registry=registry)
        self.gpu_memory_allocated = Gauge("facegen_generator_gpu_memory_allocated_bytes",
                                          "GPU memory held by tensors (CUDA only).", registry=registry)
        self.gpu_memory_reserved = Gauge("facegen_generator_gpu_memory_reserved_bytes",
                                         "GPU memory reserved by the caching allocator (CUDA only).",
                                         registry=registry)
        self._loaded: dict[str, tuple[str, ...]] = {}

    def device(self, report: DeviceReport) -> None:
        """Records what the device runner reported after a command."""
        for model, seconds in report.loads:
            self.model_load_seconds.labels(model=model).observe(seconds)
        for model, loras in self._loaded.items():
            if model not in report.loaded:
                self.model_loaded.labels(model=model).set(0)
            for lora in set(loras) - set(report.loaded.get(model, ())):
                self.lora_loaded.labels(model=model, lora=lora).set(0)
        for model, loras in report.loaded.items():
            self.model_loaded.labels(model=model).set(1)
            for lora in loras:
                self.lora_loaded.labels(model=model, lora=lora).set(1)
        self._loaded = dict(report.loaded)
        if report.memory is not None:
            allocated, reserved = report.memory
            self.gpu_memory_allocated.set(allocated)
            self.gpu_memory_reserved.set(reserved)
