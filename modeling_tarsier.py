"""PyTorch Tarsier model: per-frame vision tower -> MLP projector -> causal LLM that models time."""

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.utils import logging

try:  # copied next to a checkpoint by transformers (remote code)
    from .configuration_tarsier import TarsierConfig
    from .model_card_tarsier import CARD_FILE, card_details, is_placeholder_card, render_model_card
except ImportError:  # installed as top-level modules of this repo
    from configuration_tarsier import TarsierConfig
    from model_card_tarsier import CARD_FILE, card_details, is_placeholder_card, render_model_card


logger = logging.get_logger(__name__)


@dataclass
class TarsierModelOutputWithPast(BaseModelOutputWithPast):
    """
    Outputs of [`TarsierModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Hidden states of the LLM's last layer, aligned one to one with `input_ids` (and `labels`).
        image_hidden_states (`torch.FloatTensor` of shape `(total_frames, num_patches_per_frame, hidden_size)`, *optional*):
            Projected visual features of every frame in the batch, when `pixel_values` were given.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class TarsierCausalLMOutputWithPast(ModelOutput):
    """
    Outputs of [`TarsierForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*): next-token loss, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): LM head scores.
        past_key_values (`Cache`, *optional*): the KV cache for generation.
        hidden_states, attentions: as in any transformers causal LM, when requested.
        image_hidden_states (`torch.FloatTensor` of shape `(total_frames, num_patches_per_frame, hidden_size)`, *optional*).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class TarsierMultiModalProjector(nn.Module):
    """
    Two-layer MLP mapping vision features `(frames, patches, vision_hidden)` to LLM embeddings
    `(frames, patches, text_hidden)`; with `config.num_frame_embeddings`, plus a learned embedding of each frame's
    index in its video.
    """

    def __init__(self, config: TarsierConfig):
        super().__init__()
        self.linear_1 = nn.Linear(
            config.vision_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(
            config.text_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )
        self.frame_embedding = (
            nn.Embedding(config.num_frame_embeddings, config.text_config.hidden_size)
            if config.num_frame_embeddings
            else None
        )

    def forward(self, image_features: torch.Tensor, frame_index: torch.LongTensor | None = None) -> torch.Tensor:
        """
        Args:
            image_features (`torch.FloatTensor` of shape `(frames, patches, vision_hidden)`).
            frame_index (`torch.LongTensor` of shape `(frames,)`, *optional*): each frame's index in its video;
                required when the projector has frame embeddings.
        """
        hidden_states = self.linear_2(self.act(self.linear_1(image_features)))
        if self.frame_embedding is not None:
            if frame_index is None:
                raise ValueError("this model adds frame-index embeddings: pass num_frames with pixel_values")
            hidden_states = hidden_states + self.frame_embedding(frame_index).unsqueeze(1).to(hidden_states.dtype)
        return hidden_states


class TarsierPreTrainedModel(PreTrainedModel):
    config: TarsierConfig
    config_class = TarsierConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # data-dependent placeholder checks


class TarsierModel(TarsierPreTrainedModel):
    """Vision tower + projector + language model (no LM head). Returns hidden states as long as `input_ids`."""

    def __init__(self, config: TarsierConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = TarsierMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self._warned_long_sequence = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_image_features(
        self, pixel_values: torch.FloatTensor, num_frames: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        """
        Encode frames one by one (in a single batched call) and project them into the LLM embedding space.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(total_frames, 3, image_size, image_size)`):
                Every frame of every video and image in the batch.
            num_frames (`torch.LongTensor` of shape `(batch_size,)`, *optional*): frames per sample, which gives
                each frame its index in its video for `config.num_frame_embeddings` (required then).

        Returns:
            `torch.FloatTensor` of shape `(total_frames, num_patches_per_frame, text_hidden_size)`.
        """
        size = self.config.vision_config.image_size
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(
                f"pixel_values must have shape (total_frames, 3, {size}, {size}) with the frames of all samples "
                f"concatenated; got {tuple(pixel_values.shape)}"
            )
        vision_dtype = self.vision_tower.get_input_embeddings().weight.dtype
        outputs = self.vision_tower(pixel_values.to(vision_dtype), output_hidden_states=True, return_dict=True)
        features = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        stride = self.config.vision_feature_pooling
        if stride > 1:  # (F, [CLS +] side * side, D) -> (F, [CLS +] (side / stride) ** 2, D)
            side = self.config.vision_config.image_size // self.config.vision_config.patch_size
            extra = features.shape[1] - side * side
            grid = features[:, extra:].unflatten(1, (side, side)).permute(0, 3, 1, 2)
            pooled = nn.functional.avg_pool2d(grid, stride).flatten(2).transpose(1, 2)
            features = torch.cat([features[:, :extra], pooled], dim=1)
        frame_index = None
        if self.config.num_frame_embeddings:
            if num_frames is None:
                raise ValueError("this model adds frame-index embeddings (num_frame_embeddings): pass num_frames")
            if int(num_frames.max()) > self.config.num_frame_embeddings:
                raise ValueError(
                    f"a sample has {int(num_frames.max())} frames but the model has frame embeddings for "
                    f"{self.config.num_frame_embeddings} (config.num_frame_embeddings)"
                )
            frame_index = torch.cat([torch.arange(int(n), device=features.device) for n in num_frames])
        return self.multi_modal_projector(features, frame_index)

    def _image_token_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.BoolTensor:
        """`(batch_size, sequence_length)` mask of `image_token_id` positions."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    def _check_sequence_length(self, input_ids, inputs_embeds, attention_mask):
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if limit and length > limit and not self._warned_long_sequence:
            # The released Tarsier-7b at 8 frames uses 4,808 positions against Vicuna's 4,096 and works well.
            logger.warning(
                f"Sequence length {length} exceeds the language model's trained positions ({limit}); "
                "quality may degrade for positions beyond that."
            )
            self._warned_long_sequence = True

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_frames: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> TarsierModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids in which the processor expanded every frame into its placeholder run (see
                `docs/design.md`): `image_token_id` at patch positions, newline / frame-end ids between them.
            pixel_values (`torch.FloatTensor` of shape `(total_frames, 3, image_size, image_size)`, *optional*):
                All frames of all samples, in batch order then text order. `None` or empty for text-only batches.
            num_frames (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Frames per sample (an image counts as one); used to check `pixel_values` against the batch.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*): 1 = attend.
            position_ids, past_key_values, inputs_embeds, use_cache: as in the underlying language model.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None and self.config.video_token_id is not None:
            if (input_ids == self.config.video_token_id).any():
                raise ValueError(
                    "input_ids still contain the <video> placeholder: expand videos with TarsierProcessor before "
                    "calling the model"
                )
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        self._check_sequence_length(input_ids, inputs_embeds, attention_mask)

        image_mask = self._image_token_mask(input_ids, inputs_embeds)
        num_placeholders = int(image_mask.sum())
        image_features = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            if num_frames is not None and int(num_frames.sum()) != pixel_values.shape[0]:
                raise ValueError(
                    f"num_frames sums to {int(num_frames.sum())} but pixel_values holds {pixel_values.shape[0]} frames"
                )
            image_features = self.get_image_features(pixel_values, num_frames)
            num_features = image_features.shape[0] * image_features.shape[1]
            if num_placeholders != num_features:
                raise ValueError(
                    f"Visual placeholders and features do not match: {num_placeholders} image-token positions in "
                    f"input_ids, but {image_features.shape[0]} frames x {image_features.shape[1]} patches = "
                    f"{num_features} features. Expand prompts with TarsierProcessor using this model's vision size."
                )
            flat_features = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1).to(inputs_embeds.device), flat_features)
        elif num_placeholders > 0:
            raise ValueError(
                f"input_ids contain {num_placeholders} image-token positions but no pixel_values were given"
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return TarsierModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class TarsierForConditionalGeneration(TarsierPreTrainedModel, GenerationMixin):
    """Tarsier with a language-modeling head: describes videos and images, answers questions about them."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: TarsierConfig):
        super().__init__(config)
        self.model = TarsierModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then the folder's model card (`README.md`, `render_model_card`) when
        it has none, so that the checkpoint carries its card whatever publishes it. A card already there (a
        training run's, a converted release's, a hand-written one) is left as it is."""
        super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, CARD_FILE)
        if kwargs.get("is_main_process", True) and not os.path.exists(card):
            self._write_card(card, os.path.basename(os.path.abspath(save_directory)))

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args, **kwargs):
        """Before `push_to_hub` uploads `working_dir`: where it holds no card, or only the placeholder
        huggingface_hub writes for a repository without one ("Model Card for Model ID", written over the card
        `save_pretrained` made), the Tarsier card titled `repo_id` takes its place."""
        card = os.path.join(working_dir, CARD_FILE)
        if not os.path.exists(card) or is_placeholder_card(card):
            self._write_card(card, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def _write_card(self, path: str, title: str) -> None:
        """Write the generated card of this model, titled `title`, to `path`."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(render_model_card(title, details=card_details(self.config.to_dict())))

    def get_image_features(
        self, pixel_values: torch.FloatTensor, num_frames: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        return self.model.get_image_features(pixel_values, num_frames)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_frames: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> TarsierCausalLMOutputWithPast:
        r"""
        Args:
            input_ids, pixel_values, num_frames, attention_mask, position_ids, past_key_values, inputs_embeds,
            use_cache: see [`TarsierModel.forward`].
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Target ids aligned with `input_ids` (shifted inside the loss); `config.ignore_index` is ignored.
            logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `n` positions (0 = all).

        Returns:
            [`TarsierCausalLMOutputWithPast`] with `logits` of shape `(batch_size, kept_positions, vocab_size)`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            num_frames=num_frames,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                ignore_index=self.config.ignore_index,
                **kwargs,
            )
        return TarsierCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )


# `save_pretrained` copies this file (and the modules it imports relatively, configuration_tarsier.py and
# model_card_tarsier.py) next to the weights; the full `auto_map` comes from TarsierConfig.
TarsierModel.register_for_auto_class("AutoModel")
TarsierForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["TarsierModel", "TarsierForConditionalGeneration", "TarsierPreTrainedModel"]
