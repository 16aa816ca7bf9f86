"""The one place that knows how model families differ.

A *family* turns images and conditions into a denoiser's training problem: which space the denoiser works in (pixels
or VAE latents), how conditions and the null condition are encoded (class ids; prompts through the text encoders),
how the prediction is read (DiT's learned-sigma channels, Flux's packed latents), how samples are noised and what
the target is (DDPM noise schedules; the flow matching of SD3 and Flux, :class:`FlowMatchingFamily`). Conditions are
integer ids everywhere: a class id, or for text-to-image models the id of a prompt in the family's prompt table.
Methods (``sfr_diffusion.methods``) and the trainer only see per-sample losses built through a family, so every
method runs on every family.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import (
    DDPMScheduler,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.embeddings import LabelEmbedding
from diffusers.training_utils import compute_density_for_timestep_sampling

from .losses import per_sample_mse


@dataclass
class NoiseDraw:
    """Noise and timesteps for one batch, drawn up front so that a batch can be sharded reproducibly. Timesteps are
    what the family's denoiser is given: integer steps of a DDPM schedule, or a flow-matching scheduler's (float)
    timestep values (:class:`FlowMatchingFamily`)."""

    noise: torch.Tensor
    timesteps: torch.Tensor


def _target_dtypes(module: torch.nn.Module, dtype: torch.dtype) -> dict[int, torch.dtype]:
    """id(tensor) → the dtype it takes when `module` goes to `dtype`: floating tensors take it, except those of the
    submodules a diffusers model lists in ``_keep_in_fp32_modules``, which stay fp32; other tensors keep theirs."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    targets = {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        kept = bool(keep) and any(part in keep for part in name.split(".")[:-1])
        floating = tensor.is_floating_point()
        targets[id(tensor)] = (torch.float32 if kept else dtype) if floating else tensor.dtype
    return targets


def cast_if_needed(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` when it changes something, keeping ``_keep_in_fp32_modules`` in fp32 (as
    ``ModelMixin.to`` does, without its warning on every cast)."""
    if next(module.parameters()).dtype == dtype:
        return module
    targets = _target_dtypes(module, dtype)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.to(targets[id(tensor)])
    return module


def copy_in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of `module` whose tensors are created directly in `dtype` (``_keep_in_fp32_modules`` aside):
    copying in fp32 and casting afterwards would hold a full fp32 copy at the peak, the memory this is meant to
    save (SD-1.4's UNet: 3.4 GB)."""
    targets = _target_dtypes(module, dtype)
    memo = {}
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            copied = tensor.detach().to(targets[id(tensor)], copy=True)
            memo[id(tensor)] = (
                torch.nn.Parameter(copied, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else copied
            )
    return copy.deepcopy(module, memo)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class DiffusionFamily:
    """What every family shares: a noise scheduler, a null condition, conditions by name or id, the diffusion loss.

    Building a family only reads the pipeline. What training needs of it (frozen parts frozen and in the weight
    dtype, label dropout off) happens in :meth:`prepared_for_training`, which puts everything back afterwards.

    Traits, per family: ``text_conditioned`` (conditions are prompts rather than class ids); ``default_forget_loss``
    of SFR-on (remap on every family: onto an anchor prompt for text, onto a kept class for class models; ascent on a
    class's own loss, SPEC §1's choice, collapses the digits DiT; BENCHMARKS.md);
    ``default_adversarial_steps`` of SFR-on (robust SFR-on's inner steps: 6 on the DDPM, where they lower the
    inversion attack's success at no cost in FA, RA or FID; 3 on SD 1.x/2.x, where they lower it at a small cost in
    FID-digits, six costing more; 0 on the DiT, where they did not help, and on the families not measured with them;
    BENCHMARKS.md, settings compared); ``default_learning_rate`` (for a checkpoint no preset knows: the
    official code's settings, Adam 1e-4 on the DDPM and the DiT, 1e-5 on SD; a preset's world may measure its own, see
    :func:`~sfr_diffusion.presets.learning_rate_for`).
    """

    name: ClassVar[str]
    text_conditioned: ClassVar[bool] = False
    default_forget_loss: ClassVar[str] = "remap"
    default_adversarial_steps: ClassVar[int] = 0
    default_learning_rate: ClassVar[float] = 1e-4  # the official DDPM and DiT setting
    # The training form of the pipeline's scheduler (a fresh one: the pipeline's own keeps its last sampling steps).
    training_scheduler_class: ClassVar[type] = DDPMScheduler

    def __init__(self, pipeline, null_class_id: int, sample_shape: tuple[int, ...]):
        self.pipeline = pipeline
        self.noise_scheduler = self.training_scheduler_class.from_config(pipeline.scheduler.config)
        self.null_class_id = null_class_id
        self.sample_shape = sample_shape  # the denoiser's input, per sample
        self.frozen_dtype = torch.float32  # of frozen parts and frozen copies; the weight dtype while prepared

    def frozen_parts(self) -> list[torch.nn.Module]:
        """The modules that condition or encode but never train (VAE, text encoder)."""
        return []

    @contextlib.contextmanager
    def prepared_for_training(
        self, weight_dtype: torch.dtype = torch.float32, trains: Callable[[str], bool] | None = None
    ) -> Iterator[DiffusionFamily]:
        """Freeze the frozen parts in `weight_dtype` (mixed precision, as diffusers' training examples do), turn off
        what must not act while erasing; on exit, restore every module's dtype, mode and ``requires_grad``.

        `trains` tells which denoiser weights will train (by name; default all): the others are frozen parts too and
        take `weight_dtype` (as diffusers' LoRA examples keep the frozen UNet), so autocast does not cast them anew on
        every forward. A frozen weight cast to a lower precision gets its original back bit for bit (kept on the CPU
        meanwhile, so an accelerator holds only the cast copy): the erased pipeline's VAE and text encoder are the
        user's, unrounded. The trained weights stay fp32, and return in the denoiser's original dtype.
        """
        modules = [self.denoiser, *self.frozen_parts()]
        saved = [
            (module, next(module.parameters()).dtype, module.training, [p.requires_grad for p in module.parameters()])
            for module in modules
        ]
        cast_if_needed(self.denoiser, torch.float32)  # trainable weights stay fp32 under mixed precision
        targets = _target_dtypes(self.denoiser, weight_dtype)
        frozen = [p for name, p in self.denoiser.named_parameters() if trains is not None and not trains(name)]
        for part in self.frozen_parts():
            part.requires_grad_(False).eval()
            targets |= _target_dtypes(part, self.frozen_part_dtype(part, weight_dtype))
            frozen += [*part.parameters(), *part.buffers()]
        changed = [t for t in frozen if t.dtype != targets[id(t)]]
        # Their originals, moved off the accelerator while the cast copies work (no copy when already on the CPU).
        originals = [(t, t.data.to("cpu"), t.device) for t in changed]
        with torch.no_grad():
            for tensor in changed:
                tensor.data = tensor.data.to(targets[id(tensor)])
        self.frozen_dtype = weight_dtype
        try:
            with self._training_switches():
                yield self
        finally:
            self.frozen_dtype = torch.float32
            with torch.no_grad():
                for tensor, original, device in originals:
                    tensor.data = original.to(device)
            for module, dtype, training, flags in saved:
                cast_if_needed(module, dtype).train(training)
                for param, flag in zip(module.parameters(), flags, strict=True):
                    param.requires_grad_(flag)

    def frozen_part_dtype(self, part: torch.nn.Module, weight_dtype: torch.dtype) -> torch.dtype:
        """The dtype a frozen part takes while prepared for training: the weight dtype, unless the family's pipeline
        itself runs that part in another one (SDXL's VAE in fp32)."""
        return weight_dtype

    @contextlib.contextmanager
    def _training_switches(self) -> Iterator[None]:
        """Family-specific switches for the duration of an erasure (none by default)."""
        yield

    def check_trainable(self, selection: str) -> None:
        """Refuse a ``--trainable`` selection that means nothing for this family's denoiser (none by default)."""

    def sampling_kwargs(self) -> dict:
        """Keyword arguments every pipeline call of this package adds, so that samples have :attr:`image_shape`
        (none by default: the pipeline's own default size is the family's)."""
        return {}

    def generation_guidance(self, guidance_scale: float) -> float:
        """The guidance scale training images are generated at, asked for `guidance_scale` (that one by default)."""
        return guidance_scale

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the pipeline generates and the data must have."""
        raise NotImplementedError

    @property
    def num_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def num_classes(self) -> int:
        labels = getattr(self.pipeline, "labels", None)
        return len(set(labels.values())) if labels else self.null_class_id

    def class_names(self) -> dict[int, str]:
        """id → name from the pipeline's ``labels`` (DiTPipeline and ClassConditionalDDPMPipeline both keep one)."""
        labels = getattr(self.pipeline, "labels", None) or {}
        names: dict[int, str] = {}
        for name, idx in sorted(labels.items(), key=lambda item: item[1]):
            names.setdefault(idx, name)  # DiT's id2label may give several comma-separated names per id: the first
        return names

    def condition_name(self, condition: int) -> str:
        """What a condition id stands for: the class name (or the id), or the prompt text."""
        return self.class_names().get(condition, str(condition))

    def resolve_class(self, concept: str | int) -> int:
        """A class name (the pipeline's ``id2label``) or an id → a validated class id."""
        labels = getattr(self.pipeline, "labels", None) or {}
        text = str(concept).strip()
        if text in labels:
            return labels[text]
        if text.isdigit() and 0 <= int(text) < self.num_classes():
            return int(text)
        names = sorted(labels, key=labels.get)
        raise ValueError(f"Unknown class {concept!r}; valid names are {names} or ids 0..{self.num_classes() - 1}.")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the denoiser's space."""
        raise NotImplementedError

    # What a condition is given to the denoiser as, for the attacks of sfr_diffusion.attacks. Class-conditional
    # families look a class up in one or more embedding tables (the DDPM's class embedding; one per DiT block).

    def condition_tables(self) -> list[torch.nn.Embedding]:
        """The denoiser's class embedding tables, whose row c is what class c is given as."""
        raise NotImplementedError

    def condition_embedding(self, condition: int) -> torch.Tensor:
        """A detached fp32 copy of what the denoiser is given for `condition`: (tables, dim), row c of each table."""
        return torch.stack([table.weight[condition].detach().float() for table in self.condition_tables()])

    @contextlib.contextmanager
    def condition_embedding_override(self, conditions, embedding: torch.Tensor) -> Iterator[None]:
        """Within the block, every prediction and every sample the pipeline draws for one of `conditions` is given
        `embedding` (shaped as :meth:`condition_embedding` returns it; it may require grad) instead of the model's
        own; the weights are not touched."""
        conditions = torch.as_tensor(list(conditions))

        def hook_for(index: int):
            def replace_rows(module, args, output):
                rows = torch.isin(args[0], conditions.to(args[0].device))
                if not rows.any():
                    return output
                return torch.where(rows[:, None], embedding[index].to(output), output)

            return replace_rows

        handles = [table.register_forward_hook(hook_for(i)) for i, table in enumerate(self.condition_tables())]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def reset_condition_embedding(self, condition: int) -> bool:
        """Set `condition`'s row of every class table to the mean of the other classes' rows (the null class and
        unused rows aside), so an erasure that lives only in that row is undone; returns whether anything was
        reset (text families: no, their condition comes from a text encoder that erasure never trains)."""
        others = [c for c in range(self.num_classes()) if c != condition]
        for table in self.condition_tables():
            table.weight[condition] = table.weight[others].mean(0)
        return True

    def predict(self, model, x_t: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw_noise(self, batch_size: int, generator: torch.Generator) -> NoiseDraw:
        return NoiseDraw(
            noise=torch.randn((batch_size, *self.sample_shape), generator=generator),
            timesteps=torch.randint(0, self.num_timesteps, (batch_size,), generator=generator),
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, timesteps)
        if prediction_type == "sample":
            return x0
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")

    def noisy(self, x0: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        return self.noise_scheduler.add_noise(x0, draw.noise.to(x0), draw.timesteps.to(x0.device))

    def diffusion_loss(self, model, x0: torch.Tensor, labels: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        """Per-sample denoising loss ℓ_i at the drawn timesteps (the model's own objective)."""
        noise, timesteps = draw.noise.to(x0), draw.timesteps.to(x0.device)
        prediction = self.predict(model, self.noisy(x0, draw), timesteps, labels)
        return per_sample_mse(prediction, self.target(x0, noise, timesteps))


class ClassConditionalUNetFamily(DiffusionFamily):
    """Pixel-space class-conditional ``UNet2DModel`` (the DDPM family); the last class embedding is the null class."""

    name = "ddpm"
    default_adversarial_steps = 6

    def __init__(self, pipeline):
        unet = pipeline.unet
        if unet.config.num_class_embeds is None:
            raise ValueError("The DDPM family needs a UNet2DModel built with `num_class_embeds` (class-conditional).")
        shape = (unet.config.in_channels, *_pair(unet.config.sample_size))
        super().__init__(pipeline, null_class_id=unet.config.num_class_embeds - 1, sample_shape=shape)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.sample_shape

    def num_classes(self) -> int:
        return self.null_class_id

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def predict(self, model, x_t, timesteps, labels):
        return model(x_t, timesteps, class_labels=labels).sample

    def condition_tables(self) -> list[torch.nn.Embedding]:
        return [self.denoiser.class_embedding]


class LatentFamily(DiffusionFamily):
    """A denoiser in the latent space of the pipeline's (frozen) VAE, as DiT and Stable Diffusion are."""

    def __init__(self, pipeline, null_class_id: int, sample_shape: tuple[int, ...]):
        super().__init__(pipeline, null_class_id=null_class_id, sample_shape=sample_shape)
        self.vae = pipeline.vae

    def frozen_parts(self) -> list[torch.nn.Module]:
        return [self.vae]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.in_channels, self.sample_shape[1] * factor, self.sample_shape[2] * factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # The posterior mean rather than a sample keeps batches a pure function of the seed (see data.py); a trained
        # VAE's posterior is narrow, so the two differ little. SD 2/XL VAEs may carry a shift factor too.
        latents = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist.mean.float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor


class DiTFamily(LatentFamily):
    """Latent-space class-conditional ``DiTTransformer2DModel`` behind a VAE, as ``DiTPipeline`` samples it.

    The null class is ``num_embeds_ada_norm`` (``DiTPipeline`` hard-codes 1000, the size of ImageNet's label set);
    with learned sigma (``out_channels == 2 * in_channels``) only the first half of the output is the prediction the
    diffusion loss applies to, as in ``DiTPipeline``'s sampling loop.
    """

    name = "dit"

    def __init__(self, pipeline):
        transformer = pipeline.transformer
        shape = (transformer.config.in_channels, *_pair(transformer.config.sample_size))
        super().__init__(pipeline, null_class_id=transformer.config.num_embeds_ada_norm, sample_shape=shape)
        self.learned_sigma = transformer.config.out_channels == 2 * transformer.config.in_channels

    @contextlib.contextmanager
    def _training_switches(self) -> Iterator[None]:
        # DiT's label embedder replaces 10% of labels by the null class whenever the model is in training mode. Left
        # on, the forget step would ascend on the unconditional branch that guidance relies on (a defect of the
        # official DiT script); label dropout is applied explicitly by the methods instead (remain step only).
        embedders = [m for m in self.denoiser.modules() if hasattr(m, "token_drop") and hasattr(m, "dropout_prob")]
        saved = [m.dropout_prob for m in embedders]
        for module in embedders:
            module.dropout_prob = 0.0
        try:
            yield
        finally:
            for module, probability in zip(embedders, saved, strict=True):
                module.dropout_prob = probability

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def predict(self, model, x_t, timesteps, labels):
        output = model(x_t, timestep=timesteps, class_labels=labels).sample
        return output[:, : self.sample_shape[0]] if self.learned_sigma else output

    def condition_tables(self) -> list[torch.nn.Embedding]:
        # Every block's adaLN-Zero has its own label embedder.
        return [m.embedding_table for m in self.denoiser.modules() if isinstance(m, LabelEmbedding)]


def _prompt_rows(
    tokenizer, prompts: list[str], max_length: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """input_ids (b, tokens) → which rows are one of `prompts`, tokenized as the pipelines tokenize them (padded to
    `max_length`, by default the tokenizer's maximum length)."""
    prompt_ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids

    def rows(input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != prompt_ids.shape[-1]:
            return torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        return (input_ids[:, None, :] == prompt_ids.to(input_ids.device)[None]).all(-1).any(-1)

    return rows


def _hook_prompt_rows(
    encoder: torch.nn.Module, tokenizer, prompts: list[str], write: Callable, max_length: int | None = None
) -> object:
    """A forward hook on a text encoder that calls ``write(output, rows)`` for the rows of its batch that encode one
    of `prompts` (tokenized to `max_length` tokens; ``write`` changes the output in place); returns its handle."""
    rows_of = _prompt_rows(tokenizer, prompts, max_length)

    def hook(module, args, kwargs, output):
        rows = rows_of(args[0] if args else kwargs["input_ids"])
        if rows.any():
            write(output, rows)
        return output

    return encoder.register_forward_hook(hook, with_kwargs=True)


def _call_default(pipeline, parameter: str):
    """The default of one of the pipeline's ``__call__`` parameters (what it samples with when not told)."""
    return inspect.signature(type(pipeline).__call__).parameters[parameter].default


class TextToImageFamily(LatentFamily):
    """What the text-to-image families share: conditions are prompts, encoded by the pipeline's frozen text encoders.

    A condition id is a row of the family's prompt table (:meth:`prompt_id` adds prompts); id 0 is the empty prompt,
    the null condition. Prompts are encoded with the pipeline's own ``encode_prompt``, exactly as it conditions its
    samples, once each, and kept (fp32) on the denoiser's device. A prompt encodes to a tuple whose first entry is the
    sequence of hidden states the denoiser attends to (what :meth:`condition_embedding` returns and inversion attacks
    optimise) and whose others are what else the denoiser takes (pooled embeddings).

    A family says which text encoders it has (:meth:`text_encoders`), what a prompt encodes to
    (:meth:`_encode_prompts`), how its denoiser is called (:meth:`predict`, on :meth:`_conditioning`) and where the
    pipeline's sampling reads a prompt's hidden states (:meth:`_sampling_hooks`).
    """

    text_conditioned = True
    default_learning_rate = 1e-5  # the official SD setting

    def __init__(self, pipeline, sample_shape: tuple[int, ...]):
        super().__init__(pipeline, null_class_id=0, sample_shape=sample_shape)
        self.prompts: list[str] = []
        self._ids: dict[str, int] = {}
        self._embeddings: dict[int, tuple[torch.Tensor, ...]] = {}  # id → what it encodes to, see _encode_prompts
        self._override: tuple[torch.Tensor, torch.Tensor] | None = None  # see condition_embedding_override
        self.prompt_id("")

    def text_encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders, in the order their hidden states are concatenated."""
        raise NotImplementedError

    def frozen_parts(self) -> list[torch.nn.Module]:
        return [self.vae, *self.text_encoders()]

    def num_classes(self) -> int:
        return len(self.prompts)

    def condition_name(self, condition: int) -> str:
        return self.prompts[condition]

    def prompt_id(self, prompt: str) -> int:
        """The condition id of `prompt`, added to the table if new."""
        if not isinstance(prompt, str):
            raise TypeError(f"A prompt must be a string, got {type(prompt).__name__}.")
        if prompt not in self._ids:
            self._ids[prompt] = len(self.prompts)
            self.prompts.append(prompt)
        return self._ids[prompt]

    def resolve_class(self, concept: str | int) -> int:
        """For text-to-image models every prompt is a condition: its id in the prompt table."""
        return self.prompt_id(str(concept).strip())

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """What each prompt conditions the denoiser with, as the pipeline encodes it: (hidden states, ...)."""
        raise NotImplementedError

    @torch.no_grad()
    def _encoded(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encodings of condition ids (b,), each stacked (b, ...), fp32, on the denoiser's device."""
        device = self.denoiser.device
        missing = sorted({int(i) for i in ids.tolist()} - set(self._embeddings))
        if missing:
            for encoder in self.text_encoders():
                encoder.to(device)
            encoded = self._encode_prompts([self.prompts[i] for i in missing], device)
            self._embeddings.update((i, tuple(t.float() for t in e)) for i, e in zip(missing, encoded, strict=True))
        rows = [self._embeddings[int(i)] for i in ids.tolist()]
        return tuple(torch.stack(parts).to(device) for parts in zip(*rows, strict=True))

    def prompt_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states for condition ids (b,) → (b, tokens, dim), on the denoiser's device."""
        return self._encoded(ids)[0]

    def _conditioning(self, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the denoiser is given for condition ids (b,): their encodings, with the hidden states of the
        overridden conditions replaced (:meth:`condition_embedding_override`)."""
        states, *rest = self._encoded(labels)
        if self._override is not None:
            conditions, embedding = self._override
            rows = torch.isin(labels.to(states.device), conditions.to(states.device))
            states = torch.where(rows[:, None, None], self._as_sampled(embedding).to(states), states)
        return (states, *rest)

    def _as_sampled(self, embedding: torch.Tensor) -> torch.Tensor:
        """What of an override the pipeline's sampling can be given through :meth:`_sampling_hooks`: all of it,
        unless part of the hidden states is not a text encoder's output (SD3's zero padding)."""
        return embedding

    def condition_embedding(self, condition: int) -> torch.Tensor:
        """The prompt's encoder hidden states (tokens, dim), fp32."""
        return self.prompt_embeddings(torch.tensor([condition]))[0].detach().float()

    def _sampling_hooks(self, prompts: list[str], embedding: torch.Tensor) -> list:
        """Hooks that give `prompts` `embedding` where the pipeline reads their hidden states; their handles."""
        raise NotImplementedError

    @contextlib.contextmanager
    def condition_embedding_override(self, conditions, embedding: torch.Tensor) -> Iterator[None]:
        """The prompts of `conditions` are given `embedding` in :meth:`predict`, and in the pipeline's own sampling
        through hooks on the text encoders' outputs (rows whose token ids are one of those prompts')."""
        conditions = torch.as_tensor(list(conditions))
        # Encoded before the hooks exist: a prompt first encoded under them would be cached as the override.
        self._encoded(conditions)
        handles = self._sampling_hooks([self.prompts[int(c)] for c in conditions], embedding)
        self._override = (conditions, embedding)
        try:
            yield
        finally:
            self._override = None
            for handle in handles:
                handle.remove()

    def reset_condition_embedding(self, condition: int) -> bool:
        return False  # a prompt's embedding comes from the frozen text encoder: erasure never changes it


class StableDiffusionFamily(TextToImageFamily):
    """Text-to-image ``UNet2DConditionModel`` behind a VAE and a frozen text encoder, as ``StableDiffusionPipeline``.

    Conditions are prompt ids (:class:`TextToImageFamily`); the null condition, the empty prompt, is the
    unconditional branch of classifier-free guidance. What differs between SD 1.x/2.x and SDXL
    (:class:`StableDiffusionXLFamily`) is confined to the text encoders, what a prompt encodes to
    (:meth:`_encode_prompts`), what else the UNet takes (:meth:`_added_conditions`) and where the pipeline's sampling
    reads the prompt's hidden states (:meth:`_sampling_hooks`).
    """

    name = "sd"
    default_adversarial_steps = 3
    addition_embed_type: ClassVar[str | None] = None  # the UNet's, which the family supplies the inputs of

    def __init__(self, pipeline):
        unet = pipeline.unet
        if unet.config.addition_embed_type != self.addition_embed_type or unet.config.class_embed_type is not None:
            extra = unet.config.addition_embed_type or unet.config.class_embed_type
            raise ValueError(
                "The SD family supports text-only UNet2DConditionModel (SD 1.x/2.x); this UNet also needs "
                f"{extra!r} embeddings. SDXL UNets ('text_time') are supported in a StableDiffusionXLPipeline, with "
                "its second text encoder (text_encoder_2)."
            )
        super().__init__(pipeline, sample_shape=(unet.config.in_channels, *_pair(unet.config.sample_size)))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.pipeline.text_encoder]

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """(hidden states,) per prompt."""
        embeddings, _ = self.pipeline.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
        return [(e,) for e in embeddings]

    def _added_conditions(self, encoded: tuple[torch.Tensor, ...], x_t: torch.Tensor) -> dict:
        """Keyword arguments the UNet takes besides the hidden states (none for SD 1.x/2.x)."""
        return {}

    def predict(self, model, x_t, timesteps, labels):
        states, *rest = self._conditioning(labels)
        extra = self._added_conditions(tuple(rest), x_t)
        return model(x_t, timesteps, encoder_hidden_states=states.to(x_t.dtype), **extra).sample

    def _sampling_hooks(self, prompts: list[str], embedding: torch.Tensor) -> list:
        """The text encoder's last hidden state, which SD 1.x/2.x's ``encode_prompt`` reads."""

        def write(output, rows):
            output[0][rows] = embedding.detach().to(output[0])

        return [_hook_prompt_rows(self.pipeline.text_encoder, self.pipeline.tokenizer, prompts, write)]


class StableDiffusionXLFamily(StableDiffusionFamily):
    """SDXL: a ``text_time`` ``UNet2DConditionModel`` behind a VAE and two frozen text encoders, as
    ``StableDiffusionXLPipeline`` samples it.

    Conditions are prompt ids as in :class:`StableDiffusionFamily`. A prompt encodes, through the pipeline's own
    ``encode_prompt``, to the two encoders' penultimate hidden states concatenated (tokens × 2048 for SDXL base) and
    ``text_encoder_2``'s pooled projection; both are cached. The null condition (id 0, the empty prompt) is what the
    pipeline's guidance gives its unconditional branch: zeros for both when ``force_zeros_for_empty_prompt`` is set
    (SDXL's default), else the encoded empty prompt. :meth:`predict` adds ``added_cond_kwargs``: the pooled
    embedding as ``text_embeds`` and the pipeline's ``time_ids`` for the family's resolution (original size = target
    size = the generated images' (H, W), crop (0, 0): what the pipeline uses when sampling at its default size).

    Inversion attacks (:meth:`condition_embedding_override`) optimise the concatenated hidden states and keep the
    prompt's pooled embedding: the hidden states carry the prompt token by token through cross-attention, the pooled
    vector only adds a global bias to the timestep embedding. In the pipeline's sampling each text encoder gets a
    hook writing its own slice of the embedding into the hidden state ``encode_prompt`` reads (the penultimate one,
    or the one ``clip_skip`` selects); the pooled output is left as it is.

    Under fp16 the VAE stays fp32 when its config says ``force_upcast`` (SDXL's VAE overflows in fp16; the pipeline
    upcasts it to decode for the same reason). The learning rate is the SD family's (no SDXL measurement); robust
    SFR-on's adversarial steps are off by default (not measured on SDXL).
    """

    name = "sdxl"
    default_adversarial_steps = 0  # SD 1.x's three are measured on the digits SD only
    addition_embed_type = "text_time"

    def __init__(self, pipeline):
        if pipeline.config.get("requires_aesthetics_score"):
            raise ValueError(
                "SDXL refiner-style pipelines (requires_aesthetics_score) are not supported; erase a text-to-image "
                "StableDiffusionXLPipeline."
            )
        super().__init__(pipeline)
        height, width = self.image_shape[1:]
        self.time_ids = pipeline._get_add_time_ids(
            original_size=(height, width),
            crops_coords_top_left=(0, 0),
            target_size=(height, width),
            dtype=torch.float32,
            text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
        )  # (1, 6), as the pipeline computes them at its default size

    def text_encoders(self) -> list[torch.nn.Module]:
        return [e for e in (self.pipeline.text_encoder, self.pipeline.text_encoder_2) if e is not None]

    def frozen_part_dtype(self, part: torch.nn.Module, weight_dtype: torch.dtype) -> torch.dtype:
        if part is self.vae and weight_dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            return torch.float32
        return weight_dtype

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """(hidden states, pooled embedding) per prompt; the null condition as the pipeline's guidance sees it."""
        states, _, pooled, _ = self.pipeline.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        zeros_for_null = bool(self.pipeline.config.get("force_zeros_for_empty_prompt", False))
        return [
            (torch.zeros_like(s), torch.zeros_like(p)) if zeros_for_null and prompt == "" else (s, p)
            for prompt, s, p in zip(prompts, states, pooled, strict=True)
        ]

    def pooled_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """``text_encoder_2``'s pooled projections for condition ids (b,) → (b, dim), on the UNet's device."""
        return self._encoded(ids)[1]

    def _added_conditions(self, encoded: tuple[torch.Tensor, ...], x_t: torch.Tensor) -> dict:
        (pooled,) = encoded
        time_ids = self.time_ids.to(x_t).expand(len(x_t), -1)
        return {"added_cond_kwargs": {"text_embeds": pooled.to(x_t.dtype), "time_ids": time_ids}}

    def _sampling_hooks(self, prompts: list[str], embedding: torch.Tensor) -> list:
        pipeline = self.pipeline
        pairs = [(pipeline.text_encoder, pipeline.tokenizer), (pipeline.text_encoder_2, pipeline.tokenizer_2)]
        handles, start = [], 0
        for encoder, tokenizer in [(e, t) for e, t in pairs if e is not None]:
            part = embedding[..., start : start + encoder.config.hidden_size]
            start += encoder.config.hidden_size

            def write(output, rows, part=part):
                if output.hidden_states is None:  # not called by encode_prompt, which always asks for them
                    return
                # encode_prompt reads hidden_states[-(clip_skip + 2)]; the pipeline sets clip_skip per call.
                layer = -((getattr(pipeline, "clip_skip", None) or 0) + 2)
                output.hidden_states[layer][rows] = part.detach().to(output.hidden_states[layer])

            handles.append(_hook_prompt_rows(encoder, tokenizer, prompts, write))
        return handles


TIMESTEP_DENSITIES = ("logit_normal", "mode", "none")


class FlowMatchingFamily(DiffusionFamily):
    """Rectified flow, as SD3 and Flux are trained (Esser et al., "Scaling Rectified Flow Transformers for
    High-Resolution Image Synthesis", ICML 2024, §2-3): the noisy sample is ``x_σ = (1 − σ) x₀ + σ ε`` and the
    denoiser predicts the velocity ``v = ε − x₀``, the target of every loss (remap and ESD targets are velocities too).

    Training timesteps are drawn as diffusers' SD3 and Flux training examples draw them: ``u`` from
    ``timestep_density`` (``compute_density_for_timestep_sampling``: ``"logit_normal"`` with ``logit_mean`` and
    ``logit_std``, the SD3 paper's rf/lognorm(0, 1) and SPEC §5's default for both families; ``"mode"`` with
    ``mode_scale``; ``"none"``, uniform, the default of diffusers' Flux DreamBooth example), then the timestep at index
    ``⌊u · N⌋`` of the training schedule of the pipeline's ``FlowMatchEulerDiscreteScheduler`` (its N =
    ``num_train_timesteps`` steps, shifted when its config says so: SD3's ``shift`` 3; Flux's resolution-dependent
    dynamic shift applies when sampling only, so its training sigmas are unshifted, as in diffusers' Flux example).
    These densities weight the loss by 1 (``compute_loss_weighting_for_sd3``), so the loss is the plain MSE. A draw's
    timesteps are the scheduler's timestep values (floats, ``σ · N``, what the pipeline gives the transformer), and
    ``σ = t / N``; timestep quartiles are quarters of σ, the last one the noisiest, as for DDPM timesteps.
    """

    training_scheduler_class = FlowMatchEulerDiscreteScheduler
    timestep_density: ClassVar[str] = "logit_normal"
    logit_mean: ClassVar[float] = 0.0
    logit_std: ClassVar[float] = 1.0
    mode_scale: ClassVar[float] = 1.29

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.timestep_density not in TIMESTEP_DENSITIES:
            raise ValueError(
                f"Unknown timestep density {self.timestep_density!r}; valid densities are {list(TIMESTEP_DENSITIES)}."
            )

    def check_trainable(self, selection: str) -> None:
        if "cross_attention" in selection:
            raise ValueError(
                f"--trainable {selection} selects cross-attention layers, which the {self.name} transformer does not "
                "have: its text and image tokens meet in joint attention. Use --trainable all."
            )

    def draw_noise(self, batch_size: int, generator: torch.Generator) -> NoiseDraw:
        noise = torch.randn((batch_size, *self.sample_shape), generator=generator)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.timestep_density,
            batch_size=batch_size,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=generator,
        )
        indices = (u * self.num_timesteps).long().clamp(0, self.num_timesteps - 1)
        return NoiseDraw(noise=noise, timesteps=self.noise_scheduler.timesteps[indices].float())

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """σ of scheduler timesteps (b,): ``t / N`` (the scheduler's timesteps are its sigmas times N)."""
        return timesteps.float() / self.num_timesteps

    def noisy(self, x0: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        sigma = self.sigmas(draw.timesteps.to(x0.device)).to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - sigma) * x0 + sigma * draw.noise.to(x0)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - x0


class StableDiffusion3Family(FlowMatchingFamily, TextToImageFamily):
    """SD3 and SD3.5: an ``SD3Transformer2DModel`` (MMDiT) behind a VAE and three frozen text encoders, as
    ``StableDiffusion3Pipeline`` samples it, trained by flow matching (:class:`FlowMatchingFamily`).

    A prompt encodes, through the pipeline's own ``encode_prompt`` (at its default ``max_sequence_length``,
    :attr:`max_sequence_length`), to ``prompt_embeds`` — the two CLIP encoders' penultimate hidden states concatenated
    and zero-padded to the T5 width, followed along the tokens by T5's hidden states (77 + 256 tokens × 4096 for SD3
    medium) — and ``pooled_prompt_embeds``, the two CLIP pooled projections; both are cached. The null condition (id
    0, the empty prompt) is what the pipeline's guidance gives its unconditional branch: the empty negative prompt,
    encoded as any prompt is.

    Inversion attacks (:meth:`condition_embedding_override`) optimise ``prompt_embeds`` and keep the prompt's pooled
    embedding. In the pipeline's sampling each encoder gets a hook writing its part into what ``encode_prompt`` reads:
    each CLIP encoder's slice of the first 77 tokens into the hidden state it reads (the penultimate one, or the one
    ``clip_skip`` selects), the remaining tokens into T5's last hidden state; the pooled outputs are left as they are.
    The zero padding of the CLIP tokens (and the zeros a pipeline without T5 uses for its tokens) is no encoder's
    output, so the override keeps those coordinates at zero in :meth:`predict` as well (their gradient is zero): the
    optimised embedding is exactly what the pipeline samples with. The hooks act when the pipeline samples with the
    family's ``max_sequence_length`` (its default). The learning rate is the SD family's (no SD3 measurement).
    """

    name = "sd3"

    def __init__(self, pipeline):
        transformer = pipeline.transformer
        shape = (transformer.config.in_channels, *_pair(transformer.config.sample_size))
        super().__init__(pipeline, sample_shape=shape)
        self.max_sequence_length: int = _call_default(pipeline, "max_sequence_length")

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def text_encoders(self) -> list[torch.nn.Module]:
        encoders = (self.pipeline.text_encoder, self.pipeline.text_encoder_2, self.pipeline.text_encoder_3)
        return [e for e in encoders if e is not None]

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """(prompt_embeds, pooled_prompt_embeds) per prompt."""
        states, _, pooled, _ = self.pipeline.encode_prompt(
            prompts,
            None,
            None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return list(zip(states, pooled, strict=True))

    def pooled_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The CLIP encoders' pooled projections for condition ids (b,) → (b, dim), on the transformer's device."""
        return self._encoded(ids)[1]

    def predict(self, model, x_t, timesteps, labels):
        states, pooled = self._conditioning(labels)
        return model(
            hidden_states=x_t,
            timestep=timesteps,
            encoder_hidden_states=states.to(x_t.dtype),
            pooled_projections=pooled.to(x_t.dtype),
        ).sample

    def _clip_parts(self, width: int) -> list[tuple[torch.nn.Module, object, slice]]:
        """(encoder, tokenizer, columns of prompt_embeds it fills) for each CLIP encoder; a pipeline whose T5 width is
        smaller than the two CLIP widths together keeps only the first columns (``encode_prompt`` pads by a negative
        amount)."""
        pipeline, start, parts = self.pipeline, 0, []
        for encoder, tokenizer in (
            (pipeline.text_encoder, pipeline.tokenizer),
            (pipeline.text_encoder_2, pipeline.tokenizer_2),
        ):
            end = start + encoder.config.hidden_size
            parts.append((encoder, tokenizer, slice(min(start, width), min(end, width))))
            start = end
        return parts

    def _as_sampled(self, embedding: torch.Tensor) -> torch.Tensor:
        clip_tokens = self.pipeline.tokenizer_max_length
        filled = torch.zeros_like(embedding, dtype=torch.bool)
        for _, _, columns in self._clip_parts(embedding.shape[-1]):
            filled[:clip_tokens, columns] = True
        if self.pipeline.text_encoder_3 is not None:
            filled[clip_tokens:] = True
        return embedding * filled

    def _sampling_hooks(self, prompts: list[str], embedding: torch.Tensor) -> list:
        pipeline = self.pipeline
        clip_tokens = pipeline.tokenizer_max_length
        handles = []
        for encoder, tokenizer, columns in self._clip_parts(embedding.shape[-1]):
            part = embedding[:clip_tokens, columns]

            def write(output, rows, part=part):
                if output.hidden_states is None:  # not called by encode_prompt, which always asks for them
                    return
                # encode_prompt reads hidden_states[-(clip_skip + 2)]; the pipeline sets clip_skip per call.
                layer = -((getattr(pipeline, "clip_skip", None) or 0) + 2)
                states = output.hidden_states[layer]
                states[rows, :, : part.shape[-1]] = part.detach().to(states)

            handles.append(_hook_prompt_rows(encoder, tokenizer, prompts, write, max_length=clip_tokens))
        if pipeline.text_encoder_3 is not None:
            t5_part = embedding[clip_tokens:]

            def write_t5(output, rows):
                output[0][rows] = t5_part.detach().to(output[0])

            handles.append(
                _hook_prompt_rows(
                    pipeline.text_encoder_3, pipeline.tokenizer_3, prompts, write_t5, self.max_sequence_length
                )
            )
        return handles


class FluxFamily(FlowMatchingFamily, TextToImageFamily):
    """Flux (FLUX.1-dev, -schnell): a ``FluxTransformer2DModel`` behind a VAE, a frozen CLIP text encoder (pooled
    output) and a frozen T5 (sequence), as ``FluxPipeline`` samples it, trained by flow matching
    (:class:`FlowMatchingFamily`).

    *Latents.* The family's samples (:attr:`sample_shape`, the noise, the targets, what :meth:`predict` takes and
    returns) are the VAE's latents (C, h, w), unpacked; :meth:`predict` packs them into 2×2 patches for the transformer
    with the pipeline's ``_pack_latents``, gives it the pipeline's ``_prepare_latent_image_ids`` and the all-zero text
    ids ``encode_prompt`` returns, and unpacks its output with ``_unpack_latents``. The transformer is given
    ``t / 1000`` as the pipeline gives it. ``FluxPipeline`` records no resolution (it samples at 128 latent pixels
    unless told): the family works at the VAE's ``sample_size`` (1024 for FLUX.1), and every sample this package draws
    passes that height and width (:meth:`sampling_kwargs`).

    *Guidance.* FLUX.1-dev is guidance-distilled: its guidance embedding takes a guidance value and it has no
    classifier-free guidance at sampling. Training gives the guidance embedding the fixed value
    :attr:`guidance_scale` (by default the pipeline's default, 3.5), as diffusers' Flux training examples do with
    ``--guidance_scale``, and the generated training images are drawn at that value too (:meth:`generation_guidance`),
    so that data and training agree; ``generation_guidance_scale`` is the scale of a classifier-free guidance FLUX.1
    does not have. Models without a guidance embedding (schnell) take none.

    *Conditions.* A prompt encodes, through the pipeline's ``encode_prompt`` (at its default
    ``max_sequence_length``, :attr:`max_sequence_length`), to T5's hidden states (512 × 4096 for FLUX.1-dev) and CLIP's
    pooled output; both are cached. The null condition (id 0) is the empty prompt encoded the same way. Since FLUX.1
    samples without an unconditional branch, it serves only where a method asks for one: label dropout in remain
    steps, ESD's target ``v(∅) − η (v(c) − v(∅))``, and a remap onto "nothing"; it is also what ``FluxPipeline``'s
    ``true_cfg_scale`` with ``negative_prompt=""`` would use.

    Inversion attacks (:meth:`condition_embedding_override`) optimise the T5 hidden states and keep the prompt's
    pooled CLIP embedding; in the pipeline's sampling a hook on T5 writes them into its last hidden state for the
    prompt's rows (when sampling at the family's ``max_sequence_length``). The learning rate is the SD family's (no
    Flux measurement).
    """

    name = "flux"

    def __init__(self, pipeline):
        transformer, vae = pipeline.transformer, pipeline.vae
        factor = pipeline.vae_scale_factor
        height, width = _pair(vae.config.sample_size)
        if height != width or height % (2 * factor):
            raise ValueError(
                f"The Flux family works at the VAE's sample_size, which must be square and a multiple of {2 * factor} "
                f"(the VAE's factor × the 2×2 packing); this VAE's is {vae.config.sample_size}."
            )
        shape = (transformer.config.in_channels // 4, height // factor, width // factor)
        super().__init__(pipeline, sample_shape=shape)
        self.max_sequence_length: int = _call_default(pipeline, "max_sequence_length")
        self.guidance_scale: float = float(_call_default(pipeline, "guidance_scale"))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.pipeline.text_encoder, self.pipeline.text_encoder_2]

    def sampling_kwargs(self) -> dict:
        height, width = self.image_shape[1:]
        return {"height": height, "width": width}

    def generation_guidance(self, guidance_scale: float) -> float:
        return self.guidance_scale if self.guidance_embeds else guidance_scale

    def _encode_prompts(self, prompts: list[str], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        """(T5 hidden states, CLIP pooled output) per prompt; the text ids are zeros, made in :meth:`predict`."""
        states, pooled, _ = self.pipeline.encode_prompt(
            prompts, None, device=device, num_images_per_prompt=1, max_sequence_length=self.max_sequence_length
        )
        return list(zip(states, pooled, strict=True))

    def pooled_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """CLIP's pooled outputs for condition ids (b,) → (b, dim), on the transformer's device."""
        return self._encoded(ids)[1]

    def predict(self, model, x_t, timesteps, labels):
        states, pooled = self._conditioning(labels)
        pipeline = self.pipeline
        batch, channels, height, width = x_t.shape
        packed = pipeline._pack_latents(x_t.contiguous(), batch, channels, height, width)
        image_ids = pipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype)
        text_ids = torch.zeros(states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.guidance_scale, device=x_t.device, dtype=torch.float32)
        output = model(
            hidden_states=packed,
            timestep=timesteps.to(x_t.device, x_t.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(x_t.dtype),
            encoder_hidden_states=states.to(x_t.dtype),
            txt_ids=text_ids,
            img_ids=image_ids,
        ).sample
        factor = pipeline.vae_scale_factor
        return pipeline._unpack_latents(output, height * factor, width * factor, factor)

    def _sampling_hooks(self, prompts: list[str], embedding: torch.Tensor) -> list:
        pipeline = self.pipeline

        def write(output, rows):
            output[0][rows] = embedding.detach().to(output[0])

        return [
            _hook_prompt_rows(pipeline.text_encoder_2, pipeline.tokenizer_2, prompts, write, self.max_sequence_length)
        ]


def _check_text_to_image(pipeline, expected: type, family: str) -> None:
    """Only the text-to-image pipeline of a transformer family samples as the family trains (img2img, inpainting,
    Fill or Kontext pipelines condition on images as well)."""
    if not isinstance(pipeline, expected):
        raise ValueError(
            f"The {family} family erases from a {expected.__name__}; {type(pipeline).__name__} conditions its samples "
            f"on more than text. Load the model as a {expected.__name__}."
        )


def family_for(pipeline) -> DiffusionFamily:
    """Pick the family from the pipeline's components; an unknown layout is an error naming the supported ones."""
    unet = getattr(pipeline, "unet", None)
    if isinstance(unet, UNet2DModel) and unet.config.num_class_embeds is not None:
        return ClassConditionalUNetFamily(pipeline)
    transformer = getattr(pipeline, "transformer", None)
    if isinstance(transformer, DiTTransformer2DModel):
        return DiTFamily(pipeline)
    if isinstance(transformer, SD3Transformer2DModel):
        _check_text_to_image(pipeline, StableDiffusion3Pipeline, "sd3")
        return StableDiffusion3Family(pipeline)
    if isinstance(transformer, FluxTransformer2DModel):
        _check_text_to_image(pipeline, FluxPipeline, "flux")
        return FluxFamily(pipeline)
    if (
        isinstance(unet, UNet2DConditionModel)
        and unet.config.addition_embed_type == "text_time"
        and getattr(pipeline, "text_encoder_2", None) is not None
    ):
        return StableDiffusionXLFamily(pipeline)
    if isinstance(unet, UNet2DConditionModel) and getattr(pipeline, "text_encoder", None) is not None:
        return StableDiffusionFamily(pipeline)
    raise ValueError(
        f"Unsupported pipeline {type(pipeline).__name__}: expected a class-conditional UNet2DModel pipeline "
        "(ClassConditionalDDPMPipeline), a DiTPipeline, a StableDiffusionPipeline, a StableDiffusionXLPipeline, a "
        "StableDiffusion3Pipeline or a FluxPipeline."
    )
