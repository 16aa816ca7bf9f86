from .pipeline_class_conditional_ddpm import ClassConditionalDDPMPipeline

__all__ = ["ClassConditionalDDPMPipeline"]
