"""Tarsier model configuration.

Tarsier (Wang et al., "Tarsier: Recipes for Training and Evaluating Large Video Description Models") encodes
every video frame separately with a vision tower (CLIP-ViT or SigLIP), maps the patch features into the LLM's
embedding space with a two-layer MLP, and lets a causal LLM model time over the concatenated frames.
"""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Vision towers whose hidden states start with a CLS token (dropped by the "default" feature strategy).
VISION_TOWERS_WITH_CLS = {"clip_vision_model"}
SUPPORTED_VISION_TOWERS = {"clip_vision_model", "siglip_vision_model"}
# Written into every saved config so that each Auto class loads the remote code with trust_remote_code=True.
AUTO_MAP = {
    "AutoConfig": "configuration_tarsier.TarsierConfig",
    "AutoModel": "modeling_tarsier.TarsierModel",
    "AutoModelForCausalLM": "modeling_tarsier.TarsierForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_tarsier.TarsierForConditionalGeneration",
}


def frame_layout(grid_side: int, use_frame_separators: bool, num_additional_image_tokens: int = 0) -> list[str]:
    """The LM positions of one frame, in order: the one home of the per-frame token layout (docs/design.md).

    Args:
        grid_side: rows = cols of the (pooled) patch grid, `image_size // patch_size // vision_feature_pooling`.
        use_frame_separators: the released layout, `"newline"` after every row and `"frame_end"` after the frame.
        num_additional_image_tokens: features per frame besides the patches (1 for a kept CLIP CLS feature); they
            need `use_frame_separators=False`.

    Returns:
        `rows * (cols + 1) + 1` (with separators) or `rows * cols + num_additional_image_tokens` kinds, each
        `"image"` (a projected feature), `"newline"` or `"frame_end"`.
    """
    if not use_frame_separators:
        return ["image"] * (grid_side * grid_side + num_additional_image_tokens)
    if num_additional_image_tokens:
        raise ValueError("num_additional_image_tokens (a CLS feature per frame) needs use_frame_separators=False")
    return (["image"] * grid_side + ["newline"]) * grid_side + ["frame_end"]


class TarsierConfig(PreTrainedConfig):
    r"""
    Configuration of a Tarsier model: a vision tower, an MLP projector and a causal language model.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower: `clip_vision_model` (default: CLIP ViT-L/14 at 336 px, as the released
            Tarsier) or `siglip_vision_model`.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any causal LM transformers knows (llama for Vicuna / Yi, mistral, qwen2, ...).
        image_token_id (`int`, defaults to 32000):
            Placeholder id of every visual patch position; the model writes projected patch features there.
        video_token_id (`int`, *optional*, defaults to 32001):
            Id of the `<video>` text placeholder. The processor expands it into frame runs, so the model refuses
            input that still contains it (an unexpanded prompt), rather than treating it as text.
        image_newline_token_id (`int`, defaults to 32002):
            Token closing each row of patches when `use_frame_separators` is on (row 32002 of the released
            embedding table).
        frame_end_token_id (`int`, defaults to 32003):
            Token closing each frame when `use_frame_separators` is on (the paper's `[end-of-image]`).
        use_frame_separators (`bool`, defaults to `True`):
            The released per-frame layout: `rows * (cols + 1) + 1` LM positions per frame (601 for CLIP-L/14 at
            336 px). When off, a frame takes `rows * cols` positions.
        vision_feature_layer (`int`, defaults to -2):
            Index into the vision tower's hidden states (embeddings output = 0) whose features are projected.
        vision_feature_select_strategy (`str`, defaults to `"default"`):
            `"default"` drops the CLS token (CLIP), `"full"` keeps every position (SigLIP has no CLS).
        vision_feature_pooling (`int`, defaults to 1):
            Average-pool the patch grid with this kernel and stride before the projector (the spatial pooling of
            video frames in LLaVA-NeXT-Video); 1 keeps every patch, `image_size // patch_size` leaves one feature
            per frame. A CLS feature kept by `"full"` is not pooled.
        num_frame_embeddings (`int`, defaults to 0):
            Learned embeddings of a frame's index in its video (0, 1, ...), added to every projected feature of the
            frame, for up to this many frames per video. 0 (the released Tarsier) leaves frame order to the LLM's
            positions alone.
        projector_hidden_act (`str`, defaults to `"gelu"`):
            Activation between the two projector layers.
        multimodal_projector_bias (`bool`, defaults to `True`):
            Whether the projector's linear layers have a bias.
        ignore_index (`int`, defaults to -100):
            Label value ignored by the loss.
        tie_word_embeddings (`bool`, defaults to `False`):
            Tie the LM head to the input embeddings (follows `text_config.tie_word_embeddings` when that is set).

    Example:

    ```python
    >>> from configuration_tarsier import TarsierConfig
    >>> config = TarsierConfig()  # Tarsier-7b shapes: CLIP ViT-L/14-336 + a llama text config
    >>> config.num_positions_per_frame
    601
    ```
    """

    model_type = "tarsier"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 336,
                "patch_size": 14,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32064}),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    video_token_id: int | None = 32001
    image_newline_token_id: int = 32002
    frame_end_token_id: int = 32003
    use_frame_separators: bool = True
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    vision_feature_pooling: int = 1
    num_frame_embeddings: int = 0
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    ignore_index: int = -100
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(AUTO_MAP)
        # Checkpoints of LLMs with tied embeddings (e.g. Qwen2-0.5B, SmolLM2) say so in their own config only.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._validate()

    def _validate(self):
        vision_type = self.vision_config.model_type
        if vision_type not in SUPPORTED_VISION_TOWERS:
            raise ValueError(
                f"vision_config.model_type={vision_type!r} is not supported; use one of {sorted(SUPPORTED_VISION_TOWERS)}"
            )
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: expected 'default' or 'full'"
            )
        has_cls = vision_type in VISION_TOWERS_WITH_CLS
        if self.vision_feature_select_strategy == "default" and not has_cls:
            raise ValueError(
                f"vision_feature_select_strategy='default' drops a CLS token, but {vision_type} has none: use 'full'"
            )
        if self.vision_feature_select_strategy == "full" and has_cls and self.use_frame_separators:
            raise ValueError(
                "use_frame_separators lays patches out row by row, which leaves no place for CLIP's CLS token: "
                "use vision_feature_select_strategy='default' or use_frame_separators=False"
            )
        num_layers = self.vision_config.num_hidden_layers
        if not isinstance(self.vision_feature_layer, int) or not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer!r} is out of range for a vision tower with "
                f"{num_layers} layers (valid: {-(num_layers + 1)}..{num_layers})"
            )
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"vision_config.image_size={self.vision_config.image_size} is not a multiple of "
                f"patch_size={self.vision_config.patch_size}"
            )
        side = self.vision_config.image_size // self.vision_config.patch_size
        if not isinstance(self.vision_feature_pooling, int) or self.vision_feature_pooling < 1 or side % self.vision_feature_pooling:
            raise ValueError(
                f"vision_feature_pooling={self.vision_feature_pooling!r} must be a positive divisor of the patch grid "
                f"side ({side})"
            )
        if not isinstance(self.num_frame_embeddings, int) or self.num_frame_embeddings < 0:
            raise ValueError(f"num_frame_embeddings={self.num_frame_embeddings!r} must be an integer >= 0")
        vocab_size = self.text_config.vocab_size
        ids = {"image_token_id": self.image_token_id, "video_token_id": self.video_token_id}
        if self.use_frame_separators:
            ids.update(image_newline_token_id=self.image_newline_token_id, frame_end_token_id=self.frame_end_token_id)
        for name, token_id in ids.items():
            if token_id is None and name == "video_token_id":
                continue
            if not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
                raise ValueError(f"{name}={token_id!r} is outside the text model's vocabulary (size {vocab_size})")
        set_ids = [i for i in ids.values() if i is not None]
        if len(set(set_ids)) != len(set_ids):
            raise ValueError(f"placeholder token ids must be distinct, got {ids}")

    @property
    def patch_grid(self) -> tuple[int, int]:
        """`(rows, cols)` of patch features per frame (after `vision_feature_pooling`)."""
        side = self.vision_config.image_size // self.vision_config.patch_size // self.vision_feature_pooling
        return side, side

    def frame_layout(self) -> list[str]:
        """One frame's LM positions (`frame_layout` of this config's grid, separators and CLS feature)."""
        with_cls = self.vision_feature_select_strategy == "full" and self.vision_config.model_type in VISION_TOWERS_WITH_CLS
        return frame_layout(self.patch_grid[0], self.use_frame_separators, int(with_cls))

    @property
    def num_patches_per_frame(self) -> int:
        """Projected visual features per frame, i.e. `image_token_id` positions per frame."""
        return self.frame_layout().count("image")

    @property
    def num_positions_per_frame(self) -> int:
        """LM positions per frame: `rows * (cols + 1) + 1` with frame separators, else `num_patches_per_frame`."""
        return len(self.frame_layout())


TarsierConfig.register_for_auto_class()

__all__ = ["TarsierConfig", "frame_layout"]
