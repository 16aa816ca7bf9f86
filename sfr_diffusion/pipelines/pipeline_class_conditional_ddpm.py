# Copyright 2026 The sfr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A class-conditional DDPM pipeline with classifier-free guidance.

diffusers' ``DDPMPipeline`` takes no class labels, so class-conditional ``UNet2DModel`` checkpoints need this small
pipeline. The file imports nothing but torch and diffusers on purpose: exported pipelines carry a copy of it as
``pipeline.py``, so ``DiffusionPipeline.from_pretrained(path, custom_pipeline=path, trust_remote_code=True)``
works without sfr-diffusion.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor


class ClassConditionalDDPMPipeline(DiffusionPipeline):
    r"""
    Pipeline for class-conditional image generation with a pixel-space ``UNet2DModel``.

    The UNet must have been built with ``num_class_embeds``; the **last** class embedding
    (``num_class_embeds - 1``) is the null class used for classifier-free guidance.

    Args:
        unet ([`UNet2DModel`]): the class-conditional denoiser.
        scheduler ([`SchedulerMixin`]): a scheduler such as [`DDIMScheduler`] used to sample.
        id2label (`Dict[int, str]`, *optional*): human-readable class names, saved in `model_index.json`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, id2label: dict | None = None):
        super().__init__()
        if unet.config.num_class_embeds is None or unet.config.num_class_embeds < 2:
            raise ValueError("ClassConditionalDDPMPipeline needs a UNet2DModel built with `num_class_embeds` >= 2.")
        self.register_modules(unet=unet, scheduler=scheduler)
        # JSON turns integer keys into strings; normalise so that a reloaded pipeline equals the saved one.
        id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self.register_to_config(id2label=id2label)
        self.labels = {name: idx for idx, name in id2label.items()} if id2label else {}

    @property
    def null_class_id(self) -> int:
        return self.unet.config.num_class_embeds - 1

    def get_label_ids(self, label: str | int | Sequence[str | int]) -> list[int]:
        """Map class names (see `id2label`) or integer ids to ids, rejecting unknown names and out-of-range ids; the
        null class's id (`null_class_id`) is accepted and samples without a condition."""
        labels = [label] if isinstance(label, (str, numbers.Integral)) else list(label)
        ids = []
        for item in labels:
            if isinstance(item, bool):
                raise ValueError(f"Class labels must be names or integer ids, got the boolean {item}.")
            if isinstance(item, str) and item in self.labels:
                ids.append(self.labels[item])
            elif isinstance(item, str) and item.strip().isdigit():
                ids.append(int(item))
            elif isinstance(item, numbers.Integral):
                ids.append(int(item))
            else:
                valid = sorted(self.labels, key=self.labels.get)
                raise ValueError(f"Unknown class {item!r}; valid names are {valid}.")
        if not ids:
            raise ValueError("No class labels given; pass at least one class name or id.")
        for idx in ids:  # the null class itself draws unconditional samples, as DiTPipeline's does
            if not 0 <= idx <= self.null_class_id:
                raise ValueError(
                    f"Class id {idx} is out of range [0, {self.null_class_id - 1}] ({self.null_class_id}: the null "
                    "class, unconditional samples)."
                )
        return ids

    @torch.no_grad()
    def __call__(
        self,
        class_labels: str | int | Sequence[str | int],
        guidance_scale: float = 1.0,
        num_inference_steps: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate one image per entry of `class_labels`.

        Args:
            class_labels: class names or ids, one image per entry.
            guidance_scale: classifier-free guidance weight; 1.0 disables guidance (one UNet pass per step).
            num_inference_steps: number of denoising steps.
            generator: a `torch.Generator` making the result deterministic.
            output_type: `"pil"`, `"np"` (float array in [0, 1], NHWC) or `"pt"` (tensor in [0, 1], NCHW).
            return_dict: return an [`ImagePipelineOutput`] rather than a tuple.

        Examples:
        ```py
        >>> import torch
        >>> from sfr_diffusion import ClassConditionalDDPMPipeline

        >>> pipe = ClassConditionalDDPMPipeline.from_pretrained("outputs/digits-ddpm-erase-three")
        >>> images = pipe(["one", "three"], guidance_scale=2.0, generator=torch.manual_seed(0)).images
        ```
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        ids = self.get_label_ids(class_labels)
        device = self._execution_device
        labels = torch.tensor(ids, device=device, dtype=torch.long)
        null = torch.full_like(labels, self.null_class_id)
        use_guidance = guidance_scale > 1.0

        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (len(ids), self.unet.config.in_channels, *size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            if use_guidance:
                output = self.unet(
                    torch.cat([model_input, model_input]), t, class_labels=torch.cat([labels, null])
                ).sample
                cond, uncond = output.chunk(2)
                model_output = uncond + guidance_scale * (cond - uncond)
            else:
                model_output = self.unet(model_input, t, class_labels=labels).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample

        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = image
        else:
            result = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)
