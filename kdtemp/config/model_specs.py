"""The network specs of `teacher:` and `student:`: the built-in archs, users' own, and how each trains.

A spec is chosen by its `arch`: a built-in name picks its class (MLPSpec, CNNSpec, ResNetSpec, the text
archs EmbeddingBagSpec and TransformerSpec, HFConfigSpec), `hf:<folder>` the HFSpec, a `module:callable`
or `torchvision:NAME` the CustomSpec; `training_identity` is what of a spec enters
run ids and checkpoint identities.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import (
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from kdtemp.plugins import CALLABLE_REFERENCE
from kdtemp.strict import StrictModel

RESNET_ARCHS = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
)
ZOO_ARCHS = (
    "wrn_40_2",
    "wrn_16_2",
    "wrn_40_1",
    "vgg13",
    "vgg8",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
    "resnet50",
)
"""The rest of RepDistiller's CIFAR zoo (kdtemp/models/zoo.py)."""
CIFAR_ARCHS = RESNET_ARCHS + ZOO_ARCHS


# --- models and their training ---------------------------------------------------------------


class TrainingSettings(StrictModel):
    """How one network (teacher or student) is optimised."""

    epochs: PositiveInt = 30
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    """sgd with momentum > 0: Nesterov momentum, or plain (heavy-ball) momentum as RepDistiller uses when
    false."""
    weight_decay: NonNegativeFloat = 5e-4
    batch_size: PositiveInt | None = None
    """None takes data.batch_size."""
    lr_schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    lr_milestones: list[PositiveInt] = []
    """Epochs at which multistep multiplies the learning rate by lr_gamma."""
    lr_gamma: PositiveFloat = 0.1
    seed: NonNegativeInt = 0
    """Teacher only: students take their seeds from kd.seeds."""
    checkpoint: Path | None = None
    """Teacher only: a trained teacher's weights (kdtemp model.pt, state dict, TorchScript or torch.export
    file) for this arch; train-teacher then only evaluates and records it."""


class MLPSpec(TrainingSettings):
    arch: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = [256, 256]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class CNNSpec(TrainingSettings):
    """conv-BN-ReLU-maxpool blocks, then fc-ReLU-dropout-fc; Conv1d for sequences, Conv2d for images."""

    arch: Literal["cnn"] = "cnn"
    channels: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64]
    kernel_size: PositiveInt = 3
    hidden: PositiveInt = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5


class ResNetSpec(TrainingSettings):
    """The CIFAR archs of RepDistiller without kwargs: its ResNets (He et al. 2016; 'x4' = four times the
    width) and the zoo of Wide ResNets, VGG, MobileNetV2, ShuffleNetV1/V2 and ResNet-50."""

    arch: Literal[CIFAR_ARCHS]  # type: ignore[valid-type]


class CustomSpec(TrainingSettings):
    """A user's own network: `torchvision:NAME` (any torchvision.models builder) or `module:callable`
    importable from the working directory or PYTHONPATH, called with `kwargs` (plus num_classes and
    input_shape when it takes them)."""

    arch: str
    kwargs: dict[str, Any] = {}
    weights: str | None = None
    """torchvision only: a weights name passed through to torchvision.models.get_model (it may download)."""
    in_channels: PositiveInt | None = None
    """torchvision only: rebuild the model's first convolution for images of this many channels (1 for
    gray images; its pretrained weights are summed over the RGB channels); None keeps it as built."""

    @field_validator("arch")
    @classmethod
    def _module_and_callable(cls, value):
        if not CALLABLE_REFERENCE.match(value):
            raise ValueError(
                "a custom arch is torchvision:NAME or module:callable (a dotted module, one callable name)"
            )
        return value

    @model_validator(mode="after")
    def _weights_for_torchvision(self):
        for key in ("weights", "in_channels"):
            if getattr(self, key) is not None and not self.arch.startswith("torchvision:"):
                raise ValueError(
                    f"{key} is for torchvision models; {self.arch} is not a torchvision: arch, remove {key}"
                )
        return self


# --- text ------------------------------------------------------------------------------------------


class EmbeddingBagSpec(TrainingSettings):
    """fastText-style (Joulin et al. 2017): the mean of the text's token embeddings (and, with ngrams 2,
    of its hashed bigrams'), an optional hidden layer, then the classifier."""

    arch: Literal["embedding-bag"] = "embedding-bag"
    embedding_dim: PositiveInt = 64
    hidden: NonNegativeInt = 0
    """A ReLU layer of this width before the classifier; 0: none (fastText's linear model)."""
    ngrams: Literal[1, 2] = 1
    """2: add hashed bigram embeddings (fastText's word n-grams)."""
    buckets: PositiveInt = 20000
    """Hash buckets of the bigram embeddings (ngrams 2)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class TransformerSpec(TrainingSettings):
    """A small pre-norm Transformer encoder (Vaswani et al. 2017) over token and learned position
    embeddings, pooled over the unmasked tokens (mean) or at the first token ([CLS])."""

    arch: Literal["transformer"] = "transformer"
    layers: PositiveInt = 2
    d_model: PositiveInt = 64
    heads: PositiveInt = 4
    feed_forward: PositiveInt = 128
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    pooling: Literal["mean", "cls"] = "mean"

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}; change either")
        return self


class HFSpec(TrainingSettings):
    """`hf:<folder>`: a transformers model saved with save_pretrained (AutoModelForSequenceClassification,
    local files only; needs the `text` extra)."""

    arch: str
    fine_tune: bool = False
    """Teacher only: false takes the saved model as trained (train-teacher evaluates and records it, as
    for teacher.checkpoint); true fine-tunes it like any teacher. A student is always trained."""

    @field_validator("arch")
    @classmethod
    def _folder(cls, value):
        if not value.startswith(HF_PREFIX) or len(value) == len(HF_PREFIX):
            raise ValueError("a transformers model is hf:<folder saved with save_pretrained>")
        return value

    @property
    def folder(self) -> Path:
        return Path(self.arch[len(HF_PREFIX) :])


class HFConfigSpec(TrainingSettings):
    """A randomly initialised transformers classifier built offline from `kwargs` (AutoConfig.for_model:
    model_type and its sizes); vocab_size, num_labels and max_position_embeddings default to the data's."""

    arch: Literal["hf-config"] = "hf-config"
    kwargs: dict[str, Any] = {"model_type": "bert"}
    init_from: Path | None = None
    """A saved transformers model folder of the same model_type (the teacher's, say) that initialises the
    student, DistilBERT's recipe (Sanh et al. 2019): its embeddings, every other layer and its head. Its
    config gives every size kwargs leave out, and half its layers."""

    @field_validator("kwargs")
    @classmethod
    def _model_type(cls, value):
        if not isinstance(value.get("model_type"), str):
            raise ValueError("hf-config needs kwargs.model_type (bert, distilbert, roberta, ...)")
        return value


HF_PREFIX = "hf:"
TEXT_SPECS = (EmbeddingBagSpec, TransformerSpec, HFSpec, HFConfigSpec)
"""The specs whose networks take token ids (and masks), not float inputs."""
BUILT_IN_SPECS = (MLPSpec, CNNSpec, ResNetSpec, EmbeddingBagSpec, TransformerSpec, HFConfigSpec)
ARCH_SPEC = {
    arch: cls.__name__ for cls in BUILT_IN_SPECS for arch in get_args(cls.model_fields["arch"].annotation)
}
"""Built-in arch name -> the name of its spec class (the union's tag)."""
BUILT_IN_ARCHS = tuple(ARCH_SPEC)


def _spec_tag(value: Any) -> str | None:
    """The spec class an arch belongs to: `a:b` is a user's own model; an unknown plain name matches none."""
    arch = value.get("arch") if isinstance(value, dict) else getattr(value, "arch", None)
    if isinstance(arch, str) and arch.startswith(HF_PREFIX):
        return HFSpec.__name__
    if isinstance(arch, str) and ":" in arch:
        return CustomSpec.__name__
    return ARCH_SPEC.get(arch, arch) if isinstance(arch, str) else None


if TYPE_CHECKING:  # what the runtime union below is, for the type checker
    ModelSpec = (
        MLPSpec
        | CNNSpec
        | ResNetSpec
        | EmbeddingBagSpec
        | TransformerSpec
        | HFConfigSpec
        | HFSpec
        | CustomSpec
    )
else:
    _TAGGED_SPECS = tuple(Annotated[cls, Tag(cls.__name__)] for cls in (*BUILT_IN_SPECS, HFSpec, CustomSpec))
    ModelSpec = Annotated[
        Union[_TAGGED_SPECS],  # noqa: UP007 (a union built at runtime)
        Discriminator(_spec_tag, custom_error_type="unknown_arch", custom_error_message="unknown arch"),
    ]


def architecture_of(spec: ModelSpec) -> dict:
    """The fields that shape the network (arch and its kwargs), not how it is trained."""
    tree = spec.model_dump(mode="json", exclude=set(TrainingSettings.model_fields) | {"fine_tune"})
    if tree.get("in_channels", 0) is None:  # added later: absent while unset, so older checkpoints match
        del tree["in_channels"]
    return tree


IDENTITY_DEFAULTS_LEFT_OUT = {"nesterov": True, "checkpoint": None, "in_channels": None}
"""Training keys added after run ids were first hashed, with the default they are left out at."""


def training_identity(spec: ModelSpec) -> dict:
    """The spec as plain data for run ids and checkpoint identities.

    A key added later is left out while it holds its default, so the ids of runs (and teacher
    checkpoints) made before it existed stay the same: finished runs are still recognised.
    """
    tree = spec.model_dump(mode="json")
    for key, default in IDENTITY_DEFAULTS_LEFT_OUT.items():
        if key in tree and tree[key] == default:
            del tree[key]
    return tree


def with_default_arch(value: Any, arch: str) -> Any:
    if isinstance(value, dict) and "arch" not in value:
        return {"arch": arch, **value}
    return value
